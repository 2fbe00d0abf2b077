output "endpoint_host" {
  description = "Host name clients connect to (wss://<host>/v1/ws). Route 53 resolves it to the region with the lowest latency."
  value       = "${var.dns.endpoint_name}.${var.dns.zone_name}"
}

output "edge_urls" {
  description = "WebSocket URL of every edge through its region's load balancer, keyed by region and then edge name."
  value       = { for name, outputs in local.region_outputs : name => outputs.edge_urls }
}

output "load_balancers" {
  description = "DNS name of each region's load balancer, keyed by region name."
  value       = { for name, outputs in local.region_outputs : name => outputs.load_balancer_dns_name }
}

output "hub_node_private_ips" {
  description = "Private IP of each hub NATS node, keyed by node name."
  value       = module.hub.node_private_ips
}

output "core_worker_private_ips" {
  description = "Private IP of each core worker, keyed by worker name."
  value       = module.hub.core_private_ips
}

output "leaf_private_ips" {
  description = "Private IP of each region's NATS leaf node, keyed by region name."
  value       = { for name, outputs in local.region_outputs : name => outputs.leaf_private_ip }
}

output "store_private_ips" {
  description = "Private IPs of each region's ScyllaDB nodes, keyed by region and then node name. Empty with the SQLite backend."
  value       = { for name, outputs in local.region_outputs : name => outputs.store_private_ips }
}
