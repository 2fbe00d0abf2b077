# Every instance has a fixed private IP from the rendered tfvars, because the
# nats-server configs and the topology JSON name each other by address.
# Changing user data replaces an instance (user_data_replace_on_change), since
# cloud-init applies it on the first boot only. Data volumes are separate
# resources, so JetStream and ScyllaDB data outlive a replaced instance.

locals {
  app_dir           = "/opt/chatmesh"
  run_dir           = "/var/lib/chatmesh"
  topology_path     = "/etc/chatmesh/topology.json"
  nats_config_path  = "/etc/nats/nats-server.conf"
  token_secret_path = "${local.run_dir}/secrets/token.key"

  # The leaf's JetStream store_dir comes from the rendered config, and the
  # data volume is mounted at its parent directory.
  leaf_data_dir = dirname(jsondecode(var.settings.leaf.nats_config).jetstream.store_dir)

  fetch_token_secret = join(" ", [
    "/bin/sh -c 'umask 077 && aws ssm get-parameter",
    "--region ${var.services.token_secret_aws_region}",
    "--name ${var.services.token_secret_parameter}",
    "--with-decryption --query Parameter.Value --output text > ${local.token_secret_path}'",
  ])

  scylla_config = {
    for name, node in var.settings.store.nodes : name => yamlencode({
      cluster_name                      = var.store.cluster_name
      listen_address                    = node.private_ip
      rpc_address                       = node.private_ip
      native_transport_port             = var.store.port
      native_shard_aware_transport_port = var.store.shard_aware_port
      storage_port                      = var.store.storage_port
      ssl_storage_port                  = var.store.ssl_storage_port
      endpoint_snitch                   = "GossipingPropertyFileSnitch"
      seed_provider = [{
        class_name = "org.apache.cassandra.locator.SimpleSeedProvider"
        parameters = [{ seeds = join(",", var.store.seeds) }]
      }]
      data_file_directories = ["/var/lib/scylla/data"]
      commitlog_directory   = "/var/lib/scylla/commitlog"
      api_address           = "127.0.0.1"
      api_port              = 10000
    })
  }
}

# ---- leaf node -----------------------------------------------------------------

resource "aws_ebs_volume" "leaf_jetstream" {
  availability_zone = var.network.availability_zones[var.settings.leaf.subnet_index]
  size              = var.settings.leaf.jetstream_volume_gib
  type              = "gp3"
  encrypted         = true
  kms_key_id        = var.network.kms_key_arn

  tags = { Name = "${local.prefix}-leaf-jetstream" }
}

module "leaf_boot" {
  source = "../boot"

  files = {
    (local.nats_config_path) = {
      content     = var.settings.leaf.nats_config
      owner       = "nats"
      permissions = "0640"
    }
  }
  data_volume = {
    volume_id   = aws_ebs_volume.leaf_jetstream.id
    mount_point = local.leaf_data_dir
    owner       = "nats"
  }
  services = {
    nats-server = {
      description = "NATS leaf node of ${var.name}"
      user        = "nats"
      exec_start  = "/usr/local/bin/nats-server -c ${local.nats_config_path}"
    }
  }
}

resource "aws_instance" "leaf" {
  ami                         = data.aws_ami.nats.id
  instance_type               = var.settings.leaf.instance_type
  subnet_id                   = var.network.private_subnet_ids[var.settings.leaf.subnet_index]
  private_ip                  = var.settings.leaf.private_ip
  vpc_security_group_ids      = [aws_security_group.leaf.id]
  iam_instance_profile        = aws_iam_instance_profile.node.name
  user_data                   = module.leaf_boot.user_data
  user_data_replace_on_change = true
  monitoring                  = true
  ebs_optimized               = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 20
    encrypted   = true
    kms_key_id  = var.network.kms_key_arn
  }

  tags = { Name = "${local.prefix}-leaf", Role = "leaf" }

  # A newer image must not replace a running leaf by surprise. It is picked
  # up when the instance is replaced for another reason.
  lifecycle {
    ignore_changes = [ami]
  }
}

resource "aws_volume_attachment" "leaf_jetstream" {
  device_name                    = "/dev/sdf"
  volume_id                      = aws_ebs_volume.leaf_jetstream.id
  instance_id                    = aws_instance.leaf.id
  stop_instance_before_detaching = true
}

# ---- edges -----------------------------------------------------------------------

module "edge_boot" {
  source   = "../boot"
  for_each = var.settings.edges

  files = {
    (local.topology_path) = {
      content = var.services.topology_json
    }
  }
  commands = [
    "install -d -o chatmesh -g chatmesh -m 0750 ${local.run_dir}",
    "install -d -o chatmesh -g chatmesh -m 0700 ${dirname(local.token_secret_path)}",
  ]
  services = {
    chatmesh-edge = {
      description    = "chatmesh edge ${each.key}"
      user           = "chatmesh"
      exec_start_pre = local.fetch_token_secret
      exec_start     = "${local.app_dir}/bin/chatmesh edge --topology ${local.topology_path} --run-dir ${local.run_dir} --edge ${each.key}"
      # One file descriptor per WebSocket connection.
      limit_nofile = 1048576
    }
  }
}

resource "aws_instance" "edge" {
  for_each = var.settings.edges

  ami                         = data.aws_ami.app.id
  instance_type               = var.settings.edge_instance_type
  subnet_id                   = var.network.private_subnet_ids[each.value.subnet_index]
  private_ip                  = each.value.private_ip
  vpc_security_group_ids      = [aws_security_group.edge.id]
  iam_instance_profile        = aws_iam_instance_profile.edge.name
  user_data                   = module.edge_boot[each.key].user_data
  user_data_replace_on_change = true
  monitoring                  = true
  ebs_optimized               = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 20
    encrypted   = true
    kms_key_id  = var.network.kms_key_arn
  }

  tags = { Name = "${local.prefix}-edge-${each.key}", Role = "edge" }

  lifecycle {
    ignore_changes = [ami]
  }
}

# ---- store nodes -------------------------------------------------------------------

resource "aws_ebs_volume" "store" {
  for_each = var.settings.store.nodes

  availability_zone = var.network.availability_zones[each.value.subnet_index]
  size              = var.settings.store.volume_gib
  type              = "gp3"
  encrypted         = true
  kms_key_id        = var.network.kms_key_arn

  tags = { Name = "${local.prefix}-${each.key}-data" }
}

module "store_boot" {
  source   = "../boot"
  for_each = var.settings.store.nodes

  files = {
    "/etc/scylla/scylla.yaml" = {
      content = local.scylla_config[each.key]
    }
    # The datacenter is the region's name, as core/store/factory.py expects,
    # and the rack is the availability zone.
    "/etc/scylla/cassandra-rackdc.properties" = {
      content = "dc=${var.name}\nrack=${var.network.availability_zones[each.value.subnet_index]}\n"
    }
  }
  data_volume = {
    volume_id   = aws_ebs_volume.store[each.key].id
    mount_point = "/var/lib/scylla"
    owner       = "scylla"
  }
  commands = [
    "install -d -o scylla -g scylla /var/lib/scylla/data /var/lib/scylla/commitlog /var/lib/scylla/hints /var/lib/scylla/view_hints",
    "systemctl enable --now scylla-server.service",
  ]
}

resource "aws_instance" "store" {
  for_each = var.settings.store.nodes

  ami                         = data.aws_ami.scylla[0].id
  instance_type               = var.settings.store.instance_type
  subnet_id                   = var.network.private_subnet_ids[each.value.subnet_index]
  private_ip                  = each.value.private_ip
  vpc_security_group_ids      = [aws_security_group.store.id]
  iam_instance_profile        = aws_iam_instance_profile.node.name
  user_data                   = module.store_boot[each.key].user_data
  user_data_replace_on_change = true
  monitoring                  = true
  ebs_optimized               = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 30
    encrypted   = true
    kms_key_id  = var.network.kms_key_arn
  }

  tags = { Name = "${local.prefix}-${each.key}", Role = "store" }

  lifecycle {
    ignore_changes = [ami]
  }
}

resource "aws_volume_attachment" "store" {
  for_each = var.settings.store.nodes

  device_name                    = "/dev/sdf"
  volume_id                      = aws_ebs_volume.store[each.key].id
  instance_id                    = aws_instance.store[each.key].id
  stop_instance_before_detaching = true
}
