data "aws_partition" "current" {}

data "aws_caller_identity" "current" {}

locals {
  prefix = "${var.deployment_name}-${var.name}"

  # Of each pair of regions, the one whose name sorts first requests the
  # peering and the other accepts it (in its peering module), so every pair
  # is connected exactly once.
  peers_to_request = {
    for name, peer in var.peers : name => peer
    if sort([var.name, name])[0] == var.name
  }

  edge_ports = toset([for edge in values(var.settings.edges) : edge.port])

  store_node_ips = [for node in values(var.settings.store.nodes) : node.private_ip]

  # Store nodes of every region, this one included: the gossip peers of each node.
  all_store_ips = toset(concat(local.store_node_ips, flatten([for peer in values(var.peers) : peer.store_ips])))

  runs_store = length(var.settings.store.nodes) > 0

  token_secret_parameter_arn = "arn:${data.aws_partition.current.partition}:ssm:${var.services.token_secret_aws_region}:${data.aws_caller_identity.current.account_id}:parameter${var.services.token_secret_parameter}"

  endpoint_host = "${var.dns.endpoint_name}.${var.dns.zone_name}"
  edge_hosts    = { for name in keys(var.settings.edges) : name => "${name}.${local.endpoint_host}" }
}

# Images are baked outside Terraform, and terraform/README.md lists what each
# one must contain. Instances ignore later AMI changes (see instances.tf).
data "aws_ami" "nats" {
  most_recent = true
  owners      = [var.services.images.owner]

  filter {
    name   = "name"
    values = [var.services.images.nats]
  }
}

data "aws_ami" "app" {
  most_recent = true
  owners      = [var.services.images.owner]

  filter {
    name   = "name"
    values = [var.services.images.app]
  }
}

data "aws_ami" "scylla" {
  count = local.runs_store ? 1 : 0

  most_recent = true
  owners      = [var.services.images.owner]

  filter {
    name   = "name"
    values = [var.services.images.scylla]
  }
}

# ---- peering requests ------------------------------------------------------
# The hub and the peers with later names accept these in their peering
# modules. A route to a connection that is not accepted yet is a blackhole
# route until acceptance, so the routes need not wait.

resource "aws_vpc_peering_connection" "hub" {
  vpc_id      = var.network.vpc_id
  peer_vpc_id = var.hub.vpc_id
  peer_region = var.hub.aws_region
  auto_accept = false

  tags = { Name = "chatmesh-${var.name}-to-hub" }
}

resource "aws_route" "to_hub" {
  route_table_id            = var.network.private_route_table_id
  destination_cidr_block    = var.hub.vpc_cidr
  vpc_peering_connection_id = aws_vpc_peering_connection.hub.id
}

resource "aws_vpc_peering_connection" "peer" {
  for_each = local.peers_to_request

  vpc_id      = var.network.vpc_id
  peer_vpc_id = each.value.vpc_id
  peer_region = each.value.aws_region
  auto_accept = false

  tags = { Name = "chatmesh-${var.name}-to-${each.key}" }
}

resource "aws_route" "to_peer" {
  for_each = local.peers_to_request

  route_table_id            = var.network.private_route_table_id
  destination_cidr_block    = each.value.vpc_cidr
  vpc_peering_connection_id = aws_vpc_peering_connection.peer[each.key].id
}

# ---- instance roles ----------------------------------------------------------
# Every instance can be reached through SSM Session Manager, so no SSH port is
# open. Only edges may read the token secret.

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "read_token_secret" {
  statement {
    actions   = ["ssm:GetParameter"]
    resources = [local.token_secret_parameter_arn]
  }
}

resource "aws_iam_role" "edge" {
  name_prefix        = "chatmesh-edge-"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json

  tags = { Name = "${local.prefix}-edge" }
}

resource "aws_iam_role_policy_attachment" "edge_ssm" {
  role       = aws_iam_role.edge.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_role_policy" "edge_token_secret" {
  name   = "read-token-secret"
  role   = aws_iam_role.edge.id
  policy = data.aws_iam_policy_document.read_token_secret.json
}

resource "aws_iam_instance_profile" "edge" {
  name_prefix = "chatmesh-edge-"
  role        = aws_iam_role.edge.name
}

resource "aws_iam_role" "node" {
  name_prefix        = "chatmesh-node-"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json

  tags = { Name = "${local.prefix}-node" }
}

resource "aws_iam_role_policy_attachment" "node_ssm" {
  role       = aws_iam_role.node.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "node" {
  name_prefix = "chatmesh-node-"
  role        = aws_iam_role.node.name
}
