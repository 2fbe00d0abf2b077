output "accepted_connection_ids" {
  description = "IDs of the accepted peering connections, keyed by the requester's name."
  value       = { for name, accepter in aws_vpc_peering_connection_accepter.this : name => accepter.id }
}
