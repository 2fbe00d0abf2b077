output "node_private_ips" {
  description = "Private IP of each hub NATS node, keyed by node name."
  value       = { for name, node in aws_instance.node : name => node.private_ip }
}

output "core_private_ips" {
  description = "Private IP of each core worker, keyed by worker name."
  value       = { for name, worker in aws_instance.core : name => worker.private_ip }
}
