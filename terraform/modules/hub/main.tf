# The hub NATS cluster (JetStream domain "hub") and the core workers, in the
# hub VPC. Region leaf nodes connect to the hub nodes' leaf port over VPC
# peering. The core workers connect to the hub nodes, the region leaf nodes
# and the ScyllaDB nodes.

data "aws_partition" "current" {}

locals {
  prefix = "${var.deployment_name}-hub"

  app_dir          = "/opt/chatmesh"
  run_dir          = "/var/lib/chatmesh"
  topology_path    = "/etc/chatmesh/topology.json"
  nats_config_path = "/etc/nats/nats-server.conf"

  # Each node's JetStream store_dir comes from its rendered config, and the
  # data volume is mounted at its parent directory.
  node_data_dirs = {
    for name, node in var.settings.nodes : name => dirname(jsondecode(node.nats_config).jetstream.store_dir)
  }

  client_ports  = toset([for node in values(var.settings.nodes) : node.client_port])
  cluster_ports = toset([for node in values(var.settings.nodes) : node.cluster_port])
  leaf_ports    = toset([for node in values(var.settings.nodes) : node.leaf_port])
  monitor_ports = toset([for node in values(var.settings.nodes) : node.monitor_port])

  # Every (leaf node, hub leaf port) pair that may open a leaf connection.
  leaf_sources = {
    for pair in setproduct(keys(var.regions), local.leaf_ports) : "${pair[0]}:${pair[1]}" => {
      cidr = "${var.regions[pair[0]].leaf_ip}/32"
      port = pair[1]
    }
  }

  monitoring_sources = {
    for pair in setproduct(var.services.monitoring_cidrs, local.monitor_ports) : "${pair[0]}:${pair[1]}" => {
      cidr = pair[0]
      port = pair[1]
    }
  }

  core_to_leaves = {
    for name, region in var.regions : name => {
      cidr = "${region.leaf_ip}/32"
      port = region.leaf_client_port
    }
  }

  cql_ports = toset([var.store.port, var.store.shard_aware_port])
  core_to_store = {
    for pair in setproduct(flatten([for region in values(var.regions) : region.store_ips]), local.cql_ports) : "${pair[0]}:${pair[1]}" => {
      cidr = "${pair[0]}/32"
      port = pair[1]
    }
  }
}

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

# ---- instance role -----------------------------------------------------------
# SSM Session Manager is the only way in, because no SSH port is open.

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name_prefix        = "chatmesh-hub-"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json

  tags = { Name = "${local.prefix}-node" }
}

resource "aws_iam_role_policy_attachment" "node_ssm" {
  role       = aws_iam_role.node.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "node" {
  name_prefix = "chatmesh-hub-"
  role        = aws_iam_role.node.name
}
