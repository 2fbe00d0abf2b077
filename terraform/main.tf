# Wiring of the deployment. Each VPC is built in three layers, because a
# module block with for_each that is read as a whole depends on everything
# inside it, and region modules read each other:
#
#   network  (VPC, subnets, NAT, flow logs, KMS key)   needs nothing else
#   region   (peering requests, instances, load balancer, DNS)
#                                                       needs every network
#   peering  (accepts requests and routes back)         needs every region
#
# The hub follows the same layers: hub_network, hub, hub_peering.
#
# Every AWS region in local.supported_aws_regions has the three region-layer
# blocks below, each with for_each over the chatmesh regions in that AWS
# region. To add an AWS region, copy one group of three, rename it and point
# it at a new provider alias (terraform/README.md).

locals {
  networks = merge(
    module.network_ap_south_1,
    module.network_eu_west_1,
    module.network_us_east_1,
  )

  region_outputs = merge(
    module.region_ap_south_1,
    module.region_eu_west_1,
    module.region_us_east_1,
  )

  # Every other region, as a region module sees its peers.
  peers = {
    for name in keys(var.regions) : name => {
      for peer_name, peer in var.regions : peer_name => {
        aws_region = peer.aws_region
        vpc_id     = local.networks[peer_name].vpc_id
        vpc_cidr   = peer.network.vpc_cidr
        store_ips  = local.store_ips[peer_name]
      }
      if peer_name != name
    }
  }

  hub_for_regions = {
    aws_region = var.hub.aws_region
    vpc_id     = module.hub_network.vpc_id
    vpc_cidr   = var.hub.network.vpc_cidr
    node_ips   = local.hub_node_ips
    leaf_ports = local.hub_leaf_ports
    core_ips   = local.core_worker_ips
  }

  # For each region, the peering requests it has to accept: those from the
  # regions whose names sort before its own.
  peering_requests = {
    for accepter in keys(var.regions) : accepter => {
      for requester, outputs in local.region_outputs : requester => {
        connection_id = outputs.peering_connection_ids[accepter]
        peer_cidr     = var.regions[requester].network.vpc_cidr
      }
      if contains(keys(outputs.peering_connection_ids), accepter)
    }
  }

  dns = {
    zone_id       = data.aws_route53_zone.public.zone_id
    zone_name     = var.dns.zone_name
    endpoint_name = var.dns.endpoint_name
  }
}

data "aws_route53_zone" "public" {
  provider = aws.hub

  name         = var.dns.zone_name
  private_zone = false
}

# ---- hub ------------------------------------------------------------------------

module "hub_network" {
  source    = "./modules/network"
  providers = { aws = aws.hub }

  name                    = "${var.name}-hub"
  vpc_cidr                = var.hub.network.vpc_cidr
  availability_zones      = var.hub.network.availability_zones
  public_subnet_cidrs     = var.hub.network.public_subnet_cidrs
  private_subnet_cidrs    = var.hub.network.private_subnet_cidrs
  flow_log_retention_days = var.flow_log_retention_days
}

module "hub" {
  source    = "./modules/hub"
  providers = { aws = aws.hub }

  deployment_name = var.name
  settings        = var.hub
  network         = module.hub_network
  regions         = local.hub_view_of_regions
  store           = local.store_settings
  services        = local.region_services
}

module "hub_peering" {
  source    = "./modules/peering"
  providers = { aws = aws.hub }

  name           = "hub"
  route_table_id = module.hub_network.private_route_table_id
  requests = {
    for name, outputs in local.region_outputs : name => {
      connection_id = outputs.hub_peering_connection_id
      peer_cidr     = var.regions[name].network.vpc_cidr
    }
  }
}

# ---- ap-south-1 ---------------------------------------------------------------------

module "network_ap_south_1" {
  source    = "./modules/network"
  for_each  = local.regions_by_aws_region["ap-south-1"]
  providers = { aws = aws.ap_south_1 }

  name                    = "${var.name}-${each.key}"
  vpc_cidr                = each.value.network.vpc_cidr
  availability_zones      = each.value.network.availability_zones
  public_subnet_cidrs     = each.value.network.public_subnet_cidrs
  private_subnet_cidrs    = each.value.network.private_subnet_cidrs
  flow_log_retention_days = var.flow_log_retention_days
}

module "region_ap_south_1" {
  source    = "./modules/region"
  for_each  = local.regions_by_aws_region["ap-south-1"]
  providers = { aws = aws.ap_south_1 }

  name            = each.key
  deployment_name = var.name
  settings        = each.value
  network         = module.network_ap_south_1[each.key]
  hub             = local.hub_for_regions
  peers           = local.peers[each.key]
  store           = local.store_settings
  services        = local.region_services
  dns             = local.dns
}

module "peering_ap_south_1" {
  source    = "./modules/peering"
  for_each  = local.regions_by_aws_region["ap-south-1"]
  providers = { aws = aws.ap_south_1 }

  name           = each.key
  route_table_id = module.network_ap_south_1[each.key].private_route_table_id
  requests       = local.peering_requests[each.key]
}

# ---- eu-west-1 ------------------------------------------------------------------------

module "network_eu_west_1" {
  source    = "./modules/network"
  for_each  = local.regions_by_aws_region["eu-west-1"]
  providers = { aws = aws.eu_west_1 }

  name                    = "${var.name}-${each.key}"
  vpc_cidr                = each.value.network.vpc_cidr
  availability_zones      = each.value.network.availability_zones
  public_subnet_cidrs     = each.value.network.public_subnet_cidrs
  private_subnet_cidrs    = each.value.network.private_subnet_cidrs
  flow_log_retention_days = var.flow_log_retention_days
}

module "region_eu_west_1" {
  source    = "./modules/region"
  for_each  = local.regions_by_aws_region["eu-west-1"]
  providers = { aws = aws.eu_west_1 }

  name            = each.key
  deployment_name = var.name
  settings        = each.value
  network         = module.network_eu_west_1[each.key]
  hub             = local.hub_for_regions
  peers           = local.peers[each.key]
  store           = local.store_settings
  services        = local.region_services
  dns             = local.dns
}

module "peering_eu_west_1" {
  source    = "./modules/peering"
  for_each  = local.regions_by_aws_region["eu-west-1"]
  providers = { aws = aws.eu_west_1 }

  name           = each.key
  route_table_id = module.network_eu_west_1[each.key].private_route_table_id
  requests       = local.peering_requests[each.key]
}

# ---- us-east-1 ------------------------------------------------------------------------

module "network_us_east_1" {
  source    = "./modules/network"
  for_each  = local.regions_by_aws_region["us-east-1"]
  providers = { aws = aws.us_east_1 }

  name                    = "${var.name}-${each.key}"
  vpc_cidr                = each.value.network.vpc_cidr
  availability_zones      = each.value.network.availability_zones
  public_subnet_cidrs     = each.value.network.public_subnet_cidrs
  private_subnet_cidrs    = each.value.network.private_subnet_cidrs
  flow_log_retention_days = var.flow_log_retention_days
}

module "region_us_east_1" {
  source    = "./modules/region"
  for_each  = local.regions_by_aws_region["us-east-1"]
  providers = { aws = aws.us_east_1 }

  name            = each.key
  deployment_name = var.name
  settings        = each.value
  network         = module.network_us_east_1[each.key]
  hub             = local.hub_for_regions
  peers           = local.peers[each.key]
  store           = local.store_settings
  services        = local.region_services
  dns             = local.dns
}

module "peering_us_east_1" {
  source    = "./modules/peering"
  for_each  = local.regions_by_aws_region["us-east-1"]
  providers = { aws = aws.us_east_1 }

  name           = each.key
  route_table_id = module.network_us_east_1[each.key].private_route_table_id
  requests       = local.peering_requests[each.key]
}
