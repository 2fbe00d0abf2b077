# The accepter side of VPC peering. The requesting VPC's module creates each
# connection and its own route, and this module accepts it and routes back.
# Acceptance is a module of its own because the requesters' outputs feed it.
# Inside the region module it would be a dependency cycle between the region
# modules (terraform/README.md explains the layers).

resource "aws_vpc_peering_connection_accepter" "this" {
  for_each = var.requests

  vpc_peering_connection_id = each.value.connection_id
  auto_accept               = true

  tags = { Name = "chatmesh-${each.key}-to-${var.name}" }
}

resource "aws_route" "to_requester" {
  for_each = var.requests

  route_table_id            = var.route_table_id
  destination_cidr_block    = each.value.peer_cidr
  vpc_peering_connection_id = aws_vpc_peering_connection_accepter.this[each.key].id
}
