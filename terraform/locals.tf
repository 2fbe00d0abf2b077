# Values derived from the input variables only. Values that need module
# outputs live in main.tf. Keeping the two apart lets the tests evaluate this
# file, variables.tf and checks.tf with Terraform and no AWS provider.

locals {
  # AWS regions that have a provider configuration (providers.tf) and module
  # blocks (main.tf). topology/terraform.py keeps the same list.
  supported_aws_regions = ["ap-south-1", "eu-west-1", "us-east-1"]

  default_tags = merge(var.tags, {
    Project    = "chatmesh"
    Deployment = var.name
  })

  # The chatmesh regions each AWS region's module blocks create, keyed by
  # AWS region and then by chatmesh region name.
  regions_by_aws_region = {
    for aws_region in local.supported_aws_regions : aws_region => {
      for name, region in var.regions : name => region if region.aws_region == aws_region
    }
  }

  store_ips = {
    for name, region in var.regions : name => [for node in values(region.store.nodes) : node.private_ip]
  }

  # Up to two seed nodes per datacenter, taken in node name order, so a new
  # node in any region finds the cluster while one seed is down.
  store_seeds = flatten([for ips in values(local.store_ips) : slice(ips, 0, min(2, length(ips)))])

  hub_node_ips    = [for node in values(var.hub.nodes) : node.private_ip]
  hub_leaf_ports  = distinct([for node in values(var.hub.nodes) : node.leaf_port])
  core_worker_ips = [for worker in values(var.hub.core_workers) : worker.private_ip]

  store_settings = {
    backend          = var.store.backend
    port             = var.store.port
    shard_aware_port = var.store.shard_aware_port
    storage_port     = var.store.storage_port
    ssl_storage_port = var.store.ssl_storage_port
    cluster_name     = var.name
    seeds            = local.store_seeds
  }

  region_services = {
    topology_json           = var.topology_json
    token_secret_parameter  = var.token_secret_parameter
    token_secret_aws_region = var.hub.aws_region
    images                  = var.images
    monitoring_cidrs        = var.monitoring_cidrs
  }

  # The addresses the hub opens ports for in each region: its leaf node and
  # its store nodes.
  hub_view_of_regions = {
    for name, region in var.regions : name => {
      leaf_ip          = region.leaf.private_ip
      leaf_client_port = region.leaf.client_port
      store_ips        = local.store_ips[name]
    }
  }
}
