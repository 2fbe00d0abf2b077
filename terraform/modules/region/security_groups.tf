# One security group per role. Rules are separate resources, and a group
# created without egress rules sends nothing: Terraform removes the allow-all
# egress rule that AWS adds to a new group. Peers in other VPCs are named by
# their fixed private IPs, because security groups cannot reference groups
# across inter-region peering.

locals {
  core_cidrs      = { for ip in var.hub.core_ips : ip => "${ip}/32" }
  hub_node_cidrs  = { for ip in var.hub.node_ips : ip => "${ip}/32" }
  monitoring_cidr = { for cidr in var.services.monitoring_cidrs : cidr => cidr }

  # The hub's leaf port for every hub node. All nodes of a rendered topology
  # use the same port, but the topology allows one per node.
  hub_leaf_targets = {
    for pair in setproduct(var.hub.node_ips, var.hub.leaf_ports) : "${pair[0]}:${pair[1]}" => {
      cidr = "${pair[0]}/32"
      port = pair[1]
    }
  }

  # The CQL port and ScyllaDB's shard-aware CQL port, which scylla-driver
  # connects to when the node advertises it.
  cql_ports = toset([var.store.port, var.store.shard_aware_port])
  internode_peers = {
    for pair in setproduct(local.all_store_ips, toset([var.store.storage_port, var.store.ssl_storage_port])) : "${pair[0]}:${pair[1]}" => {
      cidr = "${pair[0]}/32"
      port = pair[1]
    }
  }

  core_cql_sources = {
    for pair in setproduct(var.hub.core_ips, local.cql_ports) : "${pair[0]}:${pair[1]}" => {
      cidr = "${pair[0]}/32"
      port = pair[1]
    }
  }
}

resource "aws_security_group" "load_balancer" {
  name_prefix = "chatmesh-lb-"
  description = "Load balancer of the ${var.name} edges: HTTPS and HTTP from the internet"
  vpc_id      = var.network.vpc_id

  tags = { Name = "${local.prefix}-load-balancer" }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "edge" {
  name_prefix = "chatmesh-edge-"
  description = "Edges of ${var.name}: WebSocket and health checks from the load balancer"
  vpc_id      = var.network.vpc_id

  tags = { Name = "${local.prefix}-edge" }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "leaf" {
  name_prefix = "chatmesh-leaf-"
  description = "NATS leaf node of ${var.name}: clients from edges and core workers"
  vpc_id      = var.network.vpc_id

  tags = { Name = "${local.prefix}-leaf" }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "store" {
  name_prefix = "chatmesh-store-"
  description = "ScyllaDB nodes of ${var.name}: CQL from core workers, gossip between store nodes"
  vpc_id      = var.network.vpc_id

  tags = { Name = "${local.prefix}-store" }

  lifecycle {
    create_before_destroy = true
  }
}

# ---- load balancer -----------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "load_balancer_public" {
  for_each = toset(["80", "443"])

  security_group_id = aws_security_group.load_balancer.id
  description       = "Clients on port ${each.key}, where port 80 only redirects to 443"
  ip_protocol       = "tcp"
  from_port         = tonumber(each.key)
  to_port           = tonumber(each.key)
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "load_balancer_to_edges" {
  for_each = local.edge_ports

  security_group_id            = aws_security_group.load_balancer.id
  description                  = "Requests and health checks to edges on port ${each.value}"
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
  referenced_security_group_id = aws_security_group.edge.id
}

# ---- edges -------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "edge_from_load_balancer" {
  for_each = local.edge_ports

  security_group_id            = aws_security_group.edge.id
  description                  = "WebSocket and /healthz from the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
  referenced_security_group_id = aws_security_group.load_balancer.id
}

resource "aws_vpc_security_group_egress_rule" "edge_to_leaf" {
  security_group_id            = aws_security_group.edge.id
  description                  = "NATS client connection to the leaf node of this region"
  ip_protocol                  = "tcp"
  from_port                    = var.settings.leaf.client_port
  to_port                      = var.settings.leaf.client_port
  referenced_security_group_id = aws_security_group.leaf.id
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = {
    edge  = aws_security_group.edge.id
    leaf  = aws_security_group.leaf.id
    store = aws_security_group.store.id
  }

  security_group_id = each.value
  description       = "HTTPS to AWS APIs (SSM, the token secret) through the NAT gateway"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

# ---- leaf node ---------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "leaf_from_edges" {
  security_group_id            = aws_security_group.leaf.id
  description                  = "NATS clients: the edges of this region"
  ip_protocol                  = "tcp"
  from_port                    = var.settings.leaf.client_port
  to_port                      = var.settings.leaf.client_port
  referenced_security_group_id = aws_security_group.edge.id
}

resource "aws_vpc_security_group_ingress_rule" "leaf_from_core" {
  for_each = local.core_cidrs

  security_group_id = aws_security_group.leaf.id
  description       = "NATS clients: core worker ${each.key}"
  ip_protocol       = "tcp"
  from_port         = var.settings.leaf.client_port
  to_port           = var.settings.leaf.client_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "leaf_monitoring" {
  for_each = local.monitoring_cidr

  security_group_id = aws_security_group.leaf.id
  description       = "NATS monitoring endpoint"
  ip_protocol       = "tcp"
  from_port         = var.settings.leaf.monitor_port
  to_port           = var.settings.leaf.monitor_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "leaf_to_hub" {
  for_each = local.hub_leaf_targets

  security_group_id = aws_security_group.leaf.id
  description       = "Leaf node connection to hub node ${each.key}"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
}

# ---- store nodes ---------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "store_from_core" {
  for_each = local.runs_store ? local.core_cql_sources : {}

  security_group_id = aws_security_group.store.id
  description       = "CQL from core worker ${each.key}"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
}

# ScyllaDB's internode traffic, plain (storage_port, 7000 by default) and with
# TLS (ssl_storage_port, 7001 by default), between the store nodes of every
# region.
resource "aws_vpc_security_group_ingress_rule" "store_internode" {
  for_each = local.runs_store ? local.internode_peers : {}

  security_group_id = aws_security_group.store.id
  description       = "Internode traffic from store node ${each.key}"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
}

resource "aws_vpc_security_group_egress_rule" "store_internode" {
  for_each = local.runs_store ? local.internode_peers : {}

  security_group_id = aws_security_group.store.id
  description       = "Internode traffic to store node ${each.key}"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
}
