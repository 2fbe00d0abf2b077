# These outputs must not depend on var.peers' acceptance or on any peering
# module: the root module feeds them to the peering modules, and a dependency
# back would be a cycle.

output "hub_peering_connection_id" {
  description = "ID of the peering connection this region requested to the hub VPC."
  value       = aws_vpc_peering_connection.hub.id
}

output "peering_connection_ids" {
  description = "IDs of the peering connections this region requested, keyed by the peer region (the peers whose names sort after this one)."
  value       = { for name, connection in aws_vpc_peering_connection.peer : name => connection.id }
}

output "endpoint_host" {
  description = "Host name clients connect to. Route 53 resolves it to the region with the lowest latency."
  value       = local.endpoint_host
}

output "edge_urls" {
  description = "WebSocket URL of each edge of this region through the load balancer."
  value       = { for name, host in local.edge_hosts : name => "wss://${host}/v1/ws" }
}

output "load_balancer_dns_name" {
  description = "DNS name of the region's load balancer."
  value       = aws_lb.edge.dns_name
}

output "leaf_private_ip" {
  description = "Private IP of the region's NATS leaf node."
  value       = aws_instance.leaf.private_ip
}

output "store_private_ips" {
  description = "Private IPs of the region's ScyllaDB nodes, keyed by node name."
  value       = { for name, node in aws_instance.store : name => node.private_ip }
}
