# Rules are separate resources. A group without egress rules sends nothing,
# because Terraform removes the allow-all egress rule AWS adds to a new group.
# Instances in other VPCs are named by their fixed private IPs.

resource "aws_security_group" "hub" {
  name_prefix = "chatmesh-hub-"
  description = "Hub NATS nodes: clients from core workers, routes between hub nodes, leaf connections from regions"
  vpc_id      = var.network.vpc_id

  tags = { Name = "${local.prefix}-nats" }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "core" {
  name_prefix = "chatmesh-core-"
  description = "Core workers: outbound to the hub, the leaf nodes and the store only"
  vpc_id      = var.network.vpc_id

  tags = { Name = "${local.prefix}-core" }

  lifecycle {
    create_before_destroy = true
  }
}

# ---- hub nodes ---------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "hub_from_core" {
  for_each = local.client_ports

  security_group_id            = aws_security_group.hub.id
  description                  = "NATS clients: core workers"
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
  referenced_security_group_id = aws_security_group.core.id
}

resource "aws_vpc_security_group_ingress_rule" "hub_cluster" {
  for_each = local.cluster_ports

  security_group_id            = aws_security_group.hub.id
  description                  = "NATS cluster routes between hub nodes"
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
  referenced_security_group_id = aws_security_group.hub.id
}

resource "aws_vpc_security_group_egress_rule" "hub_cluster" {
  for_each = local.cluster_ports

  security_group_id            = aws_security_group.hub.id
  description                  = "NATS cluster routes between hub nodes"
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
  referenced_security_group_id = aws_security_group.hub.id
}

resource "aws_vpc_security_group_ingress_rule" "hub_from_leaves" {
  for_each = local.leaf_sources

  security_group_id = aws_security_group.hub.id
  description       = "Leaf node connection from region ${each.key}"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
}

resource "aws_vpc_security_group_ingress_rule" "hub_monitoring" {
  for_each = local.monitoring_sources

  security_group_id = aws_security_group.hub.id
  description       = "NATS monitoring endpoint"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = {
    hub  = aws_security_group.hub.id
    core = aws_security_group.core.id
  }

  security_group_id = each.value
  description       = "HTTPS to AWS APIs (SSM) through the NAT gateway"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

# ---- core workers ----------------------------------------------------------------

resource "aws_vpc_security_group_egress_rule" "core_to_hub" {
  for_each = local.client_ports

  security_group_id            = aws_security_group.core.id
  description                  = "NATS client connection to the hub nodes"
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
  referenced_security_group_id = aws_security_group.hub.id
}

resource "aws_vpc_security_group_egress_rule" "core_to_leaves" {
  for_each = local.core_to_leaves

  security_group_id = aws_security_group.core.id
  description       = "NATS client connection to the leaf node of ${each.key}"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
}

resource "aws_vpc_security_group_egress_rule" "core_to_store" {
  for_each = local.core_to_store

  security_group_id = aws_security_group.core.id
  description       = "CQL to store node ${each.key}"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
}
