# Checks that need more than one variable. Terraform evaluates these
# preconditions in every plan, before it creates anything. The output they
# guard is derived from variables only, like locals.tf, so the tests run
# these checks without the AWS provider.

locals {
  vpc_cidrs = merge(
    { hub = var.hub.network.vpc_cidr },
    { for name, region in var.regions : name => region.network.vpc_cidr },
  )
  vpc_names = sort(keys(local.vpc_cidrs))

  # Two CIDRs overlap when their network addresses agree on the shorter of
  # the two prefixes.
  overlapping_vpcs = flatten([
    for index, first in local.vpc_names : [
      for second in slice(local.vpc_names, index + 1, length(local.vpc_names)) :
      "${first} (${local.vpc_cidrs[first]}) and ${second} (${local.vpc_cidrs[second]})"
      if try(
        cidrhost("${cidrhost(local.vpc_cidrs[first], 0)}/${min(tonumber(split("/", local.vpc_cidrs[first])[1]), tonumber(split("/", local.vpc_cidrs[second])[1]))}", 0)
        == cidrhost("${cidrhost(local.vpc_cidrs[second], 0)}/${min(tonumber(split("/", local.vpc_cidrs[first])[1]), tonumber(split("/", local.vpc_cidrs[second])[1]))}", 0),
        false,
      )
    ]
  ])

  subnets_by_vpc = merge(
    { hub = var.hub.network },
    { for name, region in var.regions : name => region.network },
  )

  # A subnet lies in its VPC when it is at least as long and agrees with the
  # VPC's network address on the VPC's prefix.
  subnets_outside_vpc = flatten([
    for name, network in local.subnets_by_vpc : [
      for cidr in concat(network.public_subnet_cidrs, network.private_subnet_cidrs) : "${name}: ${cidr} is not inside ${network.vpc_cidr}"
      if !try(
        tonumber(split("/", cidr)[1]) >= tonumber(split("/", network.vpc_cidr)[1])
        && cidrhost("${cidrhost(cidr, 0)}/${split("/", network.vpc_cidr)[1]}", 0) == cidrhost(network.vpc_cidr, 0),
        false,
      )
    ]
  ])

  # Every fixed private address with the private subnets of its VPC.
  placements = concat(
    [for name, node in var.hub.nodes : { owner = "hub.nodes.${name}", ip = node.private_ip, subnet_index = node.subnet_index, subnets = var.hub.network.private_subnet_cidrs }],
    [for name, worker in var.hub.core_workers : { owner = "hub.core_workers.${name}", ip = worker.private_ip, subnet_index = worker.subnet_index, subnets = var.hub.network.private_subnet_cidrs }],
    [for name, region in var.regions : { owner = "regions.${name}.leaf", ip = region.leaf.private_ip, subnet_index = region.leaf.subnet_index, subnets = region.network.private_subnet_cidrs }],
    flatten([
      for region_name, region in var.regions : [
        for name, edge in region.edges : { owner = "regions.${region_name}.edges.${name}", ip = edge.private_ip, subnet_index = edge.subnet_index, subnets = region.network.private_subnet_cidrs }
      ]
    ]),
    flatten([
      for region_name, region in var.regions : [
        for name, node in region.store.nodes : { owner = "regions.${region_name}.store.nodes.${name}", ip = node.private_ip, subnet_index = node.subnet_index, subnets = region.network.private_subnet_cidrs }
      ]
    ]),
  )

  # An address lies in its subnet when it agrees with the subnet's network
  # address on the subnet's prefix. AWS reserves the first four addresses
  # and the last one of every subnet.
  misplaced_addresses = [
    for placement in local.placements : "${placement.owner} (${placement.ip})"
    if !try(
      cidrhost("${placement.ip}/${split("/", placement.subnets[placement.subnet_index])[1]}", 0) == cidrhost(placement.subnets[placement.subnet_index], 0)
      && placement.ip != cidrhost(placement.subnets[placement.subnet_index], 0)
      && placement.ip != cidrhost(placement.subnets[placement.subnet_index], 1)
      && placement.ip != cidrhost(placement.subnets[placement.subnet_index], 2)
      && placement.ip != cidrhost(placement.subnets[placement.subnet_index], 3)
      && placement.ip != cidrhost(placement.subnets[placement.subnet_index], -1),
      false,
    )
  ]

  duplicate_addresses = [
    for ip, owners in { for placement in local.placements : placement.ip => placement.owner... } : "${ip} (${join(", ", owners)})"
    if length(owners) > 1
  ]

  # The ScyllaDB backend needs at least replication_factor nodes in every
  # datacenter, and the SQLite backend runs no store nodes.
  store_node_count_errors = [
    for name, region in var.regions : (
      var.store.backend == "scylla"
      ? "${name} has ${length(region.store.nodes)} store node(s) for replication factor ${region.store.replication_factor}"
      : "${name} has store nodes but store.backend is sqlite"
    )
    if(var.store.backend == "scylla" ? length(region.store.nodes) < region.store.replication_factor : length(region.store.nodes) > 0)
  ]

  topology = jsondecode(var.topology_json)
}

output "deployment" {
  description = "What this deployment creates, per AWS region: the hub and the chatmesh regions with their edges and store nodes. Its preconditions check that the variables agree with each other."
  value = {
    hub = {
      aws_region   = var.hub.aws_region
      nodes        = sort(keys(var.hub.nodes))
      core_workers = sort(keys(var.hub.core_workers))
    }
    regions = {
      for name, region in var.regions : name => {
        aws_region  = region.aws_region
        edges       = sort(keys(region.edges))
        store_nodes = sort(keys(region.store.nodes))
      }
    }
    regions_by_aws_region = { for aws_region, regions in local.regions_by_aws_region : aws_region => sort(keys(regions)) }
    store_seeds           = local.store_seeds
  }

  precondition {
    condition     = length(local.overlapping_vpcs) == 0
    error_message = "VPC CIDRs overlap, which VPC peering rejects: ${join("; ", local.overlapping_vpcs)}."
  }

  precondition {
    condition     = length(local.subnets_outside_vpc) == 0
    error_message = "Subnets outside their VPC: ${join("; ", local.subnets_outside_vpc)}."
  }

  precondition {
    condition     = length(local.misplaced_addresses) == 0
    error_message = "These private IPs are not usable addresses of the private subnet their subnet_index names: ${join("; ", local.misplaced_addresses)}."
  }

  precondition {
    condition     = length(local.duplicate_addresses) == 0
    error_message = "These private IPs are assigned more than once: ${join("; ", local.duplicate_addresses)}."
  }

  precondition {
    condition     = length(local.store_node_count_errors) == 0
    error_message = "Store nodes do not fit store.backend: ${join("; ", local.store_node_count_errors)}."
  }

  precondition {
    condition = (
      sort([for region in local.topology.regions : region.name]) == sort(keys(var.regions))
      && sort([for node in local.topology.hub.nodes : node.name]) == sort(keys(var.hub.nodes))
    )
    error_message = "topology_json names other regions or hub nodes than the regions and hub variables; render all of them from the same topology."
  }
}
