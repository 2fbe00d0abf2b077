# Fixed private IPs, because the rendered configs name each other by address.
# Changing user data replaces an instance, since cloud-init applies it on the
# first boot only. Replace hub nodes one at a time so the cluster keeps a
# quorum (terraform/README.md). Data volumes are separate resources and
# outlive a replaced instance.

# ---- hub NATS nodes --------------------------------------------------------------

resource "aws_ebs_volume" "jetstream" {
  for_each = var.settings.nodes

  availability_zone = var.network.availability_zones[each.value.subnet_index]
  size              = var.settings.jetstream_volume_gib
  type              = "gp3"
  encrypted         = true
  kms_key_id        = var.network.kms_key_arn

  tags = { Name = "${local.prefix}-${each.key}-jetstream" }
}

module "node_boot" {
  source   = "../boot"
  for_each = var.settings.nodes

  files = {
    (local.nats_config_path) = {
      content     = each.value.nats_config
      owner       = "nats"
      permissions = "0640"
    }
  }
  data_volume = {
    volume_id   = aws_ebs_volume.jetstream[each.key].id
    mount_point = local.node_data_dirs[each.key]
    owner       = "nats"
  }
  services = {
    nats-server = {
      description = "NATS hub node ${each.key}"
      user        = "nats"
      exec_start  = "/usr/local/bin/nats-server -c ${local.nats_config_path}"
    }
  }
}

resource "aws_instance" "node" {
  for_each = var.settings.nodes

  ami                         = data.aws_ami.nats.id
  instance_type               = var.settings.instance_type
  subnet_id                   = var.network.private_subnet_ids[each.value.subnet_index]
  private_ip                  = each.value.private_ip
  vpc_security_group_ids      = [aws_security_group.hub.id]
  iam_instance_profile        = aws_iam_instance_profile.node.name
  user_data                   = module.node_boot[each.key].user_data
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

  tags = { Name = "${local.prefix}-${each.key}", Role = "hub" }

  # A newer image must not replace running hub nodes by surprise. It is
  # picked up when an instance is replaced for another reason.
  lifecycle {
    ignore_changes = [ami]
  }
}

resource "aws_volume_attachment" "jetstream" {
  for_each = var.settings.nodes

  device_name                    = "/dev/sdf"
  volume_id                      = aws_ebs_volume.jetstream[each.key].id
  instance_id                    = aws_instance.node[each.key].id
  stop_instance_before_detaching = true
}

# ---- core workers ------------------------------------------------------------------
# The data volume contains the core's run directory. With the SQLite backend
# that includes the message store itself.

resource "aws_ebs_volume" "core" {
  for_each = var.settings.core_workers

  availability_zone = var.network.availability_zones[each.value.subnet_index]
  size              = var.settings.core_volume_gib
  type              = "gp3"
  encrypted         = true
  kms_key_id        = var.network.kms_key_arn

  tags = { Name = "${local.prefix}-${each.key}-data" }
}

module "core_boot" {
  source   = "../boot"
  for_each = var.settings.core_workers

  files = {
    (local.topology_path) = {
      content = var.services.topology_json
    }
  }
  data_volume = {
    volume_id   = aws_ebs_volume.core[each.key].id
    mount_point = local.run_dir
    owner       = "chatmesh"
  }
  # The core keeps its data (the SQLite file, with that backend) in
  # <run dir>/data and does not create the directory itself.
  commands = [
    "install -d -o chatmesh -g chatmesh -m 0750 ${local.run_dir}/data",
  ]
  services = {
    chatmesh-core = {
      description = "chatmesh core worker ${each.value.worker_id}"
      user        = "chatmesh"
      exec_start  = "${local.app_dir}/bin/chatmesh core --topology ${local.topology_path} --run-dir ${local.run_dir} --worker ${each.value.worker_id}"
    }
  }
}

resource "aws_instance" "core" {
  for_each = var.settings.core_workers

  ami                         = data.aws_ami.app.id
  instance_type               = var.settings.core_instance_type
  subnet_id                   = var.network.private_subnet_ids[each.value.subnet_index]
  private_ip                  = each.value.private_ip
  vpc_security_group_ids      = [aws_security_group.core.id]
  iam_instance_profile        = aws_iam_instance_profile.node.name
  user_data                   = module.core_boot[each.key].user_data
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

  tags = { Name = "${local.prefix}-${each.key}", Role = "core" }

  lifecycle {
    ignore_changes = [ami]
  }
}

resource "aws_volume_attachment" "core" {
  for_each = var.settings.core_workers

  device_name                    = "/dev/sdf"
  volume_id                      = aws_ebs_volume.core[each.key].id
  instance_id                    = aws_instance.core[each.key].id
  stop_instance_before_detaching = true
}
