# The values of these variables are rendered from a topology by
# `chatmesh topology render --terraform` (topology/terraform.py). Write them
# by hand only to experiment. Each validation here checks one variable, and
# checks.tf checks that the variables agree with each other.

variable "name" {
  description = "Name of the deployment: the topology's name. It prefixes Name tags and is the ScyllaDB cluster name."
  type        = string

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$", var.name))
    error_message = "name must be 1-32 characters of lowercase letters, digits and hyphens, start with a letter and not end with a hyphen; got \"${var.name}\"."
  }
}

variable "hub" {
  description = "The hub: its AWS region and VPC, the hub NATS nodes with fixed private IPs and rendered nats-server configs (JSON), the JetStream stream replicas, and the core workers. Instance types and volume sizes are optional."
  type = object({
    aws_region = string
    network = object({
      vpc_cidr             = string
      availability_zones   = list(string)
      public_subnet_cidrs  = list(string)
      private_subnet_cidrs = list(string)
    })
    stream_replicas = number
    nodes = map(object({
      private_ip   = string
      subnet_index = number
      client_port  = number
      cluster_port = number
      leaf_port    = number
      monitor_port = number
      nats_config  = string
    }))
    core_workers = map(object({
      worker_id    = number
      private_ip   = string
      subnet_index = number
    }))
    instance_type        = optional(string, "m6i.large")
    core_instance_type   = optional(string, "m6i.large")
    jetstream_volume_gib = optional(number, 100)
    core_volume_gib      = optional(number, 50)
  })

  validation {
    condition     = contains(local.supported_aws_regions, var.hub.aws_region)
    error_message = "hub.aws_region \"${var.hub.aws_region}\" has no provider configuration here; use one of ${join(", ", local.supported_aws_regions)} or add it (terraform/README.md, \"Adding an AWS region\")."
  }

  validation {
    condition     = can(cidrnetmask(var.hub.network.vpc_cidr)) && contains(range(16, 21), try(tonumber(split("/", var.hub.network.vpc_cidr)[1]), 0))
    error_message = "hub.network.vpc_cidr must be an IPv4 CIDR from /16 to /20; got \"${var.hub.network.vpc_cidr}\"."
  }

  validation {
    condition = (
      contains([2, 3], length(var.hub.network.availability_zones))
      && alltrue([for zone in var.hub.network.availability_zones : startswith(zone, var.hub.aws_region)])
      && length(var.hub.network.public_subnet_cidrs) == length(var.hub.network.availability_zones)
      && length(var.hub.network.private_subnet_cidrs) == length(var.hub.network.availability_zones)
      && alltrue([for cidr in concat(var.hub.network.public_subnet_cidrs, var.hub.network.private_subnet_cidrs) : can(cidrnetmask(cidr))])
    )
    error_message = "hub.network must name 2 or 3 availability zones of hub.aws_region and list one public and one private subnet CIDR per zone, all valid IPv4 CIDRs."
  }

  validation {
    condition     = length(var.hub.nodes) >= 1 && length(var.hub.nodes) <= 5 && var.hub.stream_replicas >= 1 && var.hub.stream_replicas <= length(var.hub.nodes)
    error_message = "The hub needs 1 to 5 nodes, and hub.stream_replicas must be between 1 and the number of nodes."
  }

  validation {
    condition     = length(var.hub.core_workers) >= 1
    error_message = "hub.core_workers must name at least one core worker."
  }

  validation {
    condition     = alltrue([for node in values(var.hub.nodes) : can(jsondecode(node.nats_config).jetstream.store_dir)])
    error_message = "Every hub.nodes.*.nats_config must be a nats-server config in JSON with jetstream.store_dir, as topology/render.py writes it."
  }

  validation {
    condition = alltrue(flatten([
      for node in values(var.hub.nodes) : [
        for port in [node.client_port, node.cluster_port, node.leaf_port, node.monitor_port] : port >= 1 && port <= 65535
      ]
    ]))
    error_message = "Every hub node port must be between 1 and 65535."
  }
}

variable "regions" {
  description = "The chatmesh regions, keyed by region name. Each has an AWS region, a VPC, a NATS leaf node (fixed private IP, rendered nats-server config in JSON), its edges, and its ScyllaDB nodes (none with the SQLite backend). Instance types, volume sizes and load balancer settings are optional."
  type = map(object({
    aws_region = string
    network = object({
      vpc_cidr             = string
      availability_zones   = list(string)
      public_subnet_cidrs  = list(string)
      private_subnet_cidrs = list(string)
    })
    leaf = object({
      private_ip           = string
      subnet_index         = number
      client_port          = number
      monitor_port         = number
      nats_config          = string
      instance_type        = optional(string, "m6i.large")
      jetstream_volume_gib = optional(number, 100)
    })
    edges = map(object({
      private_ip   = string
      subnet_index = number
      port         = number
    }))
    edge_instance_type = optional(string, "c6i.large")
    store = object({
      replication_factor = number
      nodes = optional(map(object({
        private_ip   = string
        subnet_index = number
      })), {})
      instance_type = optional(string, "r6i.xlarge")
      volume_gib    = optional(number, 500)
    })
    load_balancer = optional(object({
      deletion_protection = optional(bool, true)
      idle_timeout_s      = optional(number, 300)
      access_logs_bucket  = optional(string)
    }), {})
  }))

  validation {
    condition     = length(var.regions) >= 1
    error_message = "regions must contain at least one region."
  }

  validation {
    condition     = alltrue([for name in keys(var.regions) : can(regex("^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$", name)) && name != "hub"])
    error_message = "Every region name must be 1-32 lowercase letters, digits and hyphens, and \"hub\" is reserved; got ${join(", ", keys(var.regions))}."
  }

  validation {
    condition     = alltrue([for region in values(var.regions) : contains(local.supported_aws_regions, region.aws_region)])
    error_message = "Every regions.*.aws_region must be one of ${join(", ", local.supported_aws_regions)}, the AWS regions with a provider configuration here; to add one, see terraform/README.md, \"Adding an AWS region\"."
  }

  validation {
    condition = alltrue([
      for region in values(var.regions) :
      can(cidrnetmask(region.network.vpc_cidr)) && contains(range(16, 21), try(tonumber(split("/", region.network.vpc_cidr)[1]), 0))
    ])
    error_message = "Every regions.*.network.vpc_cidr must be an IPv4 CIDR from /16 to /20."
  }

  validation {
    condition = alltrue([
      for region in values(var.regions) :
      contains([2, 3], length(region.network.availability_zones))
      && alltrue([for zone in region.network.availability_zones : startswith(zone, region.aws_region)])
      && length(region.network.public_subnet_cidrs) == length(region.network.availability_zones)
      && length(region.network.private_subnet_cidrs) == length(region.network.availability_zones)
      && alltrue([for cidr in concat(region.network.public_subnet_cidrs, region.network.private_subnet_cidrs) : can(cidrnetmask(cidr))])
    ])
    error_message = "Every regions.*.network must name 2 or 3 availability zones of the region's aws_region and list one public and one private subnet CIDR per zone, all valid IPv4 CIDRs."
  }

  validation {
    condition     = alltrue([for region in values(var.regions) : length(region.edges) >= 1])
    error_message = "Every region needs at least one edge."
  }

  validation {
    condition     = alltrue([for region in values(var.regions) : can(jsondecode(region.leaf.nats_config).jetstream.store_dir)])
    error_message = "Every regions.*.leaf.nats_config must be a nats-server config in JSON with jetstream.store_dir, as topology/render.py writes it."
  }

  validation {
    condition = alltrue(flatten([
      for region in values(var.regions) : concat(
        [for port in [region.leaf.client_port, region.leaf.monitor_port] : port >= 1 && port <= 65535],
        [for edge in values(region.edges) : edge.port >= 1 && edge.port <= 65535],
      )
    ]))
    error_message = "Every leaf and edge port must be between 1 and 65535."
  }

  validation {
    condition     = alltrue([for region in values(var.regions) : region.store.replication_factor >= 1 && region.store.replication_factor <= 9])
    error_message = "Every regions.*.store.replication_factor must be between 1 and 9."
  }

  validation {
    condition     = alltrue([for region in values(var.regions) : region.load_balancer.idle_timeout_s >= 1 && region.load_balancer.idle_timeout_s <= 4000])
    error_message = "Every regions.*.load_balancer.idle_timeout_s must be between 1 and 4000 seconds, the range an application load balancer accepts."
  }
}

variable "store" {
  description = "The message store named by the topology: backend (\"sqlite\" keeps messages on the core worker's volume, \"scylla\" runs ScyllaDB nodes in every region), the CQL port, the internode port, the keyspace, ScyllaDB's shard-aware CQL port and the internode TLS port."
  type = object({
    backend          = string
    port             = number
    storage_port     = number
    keyspace         = string
    shard_aware_port = optional(number, 19042)
    ssl_storage_port = optional(number, 7001)
  })

  validation {
    condition     = contains(["sqlite", "scylla"], var.store.backend)
    error_message = "store.backend must be \"sqlite\" or \"scylla\"; got \"${var.store.backend}\"."
  }

  validation {
    condition = (
      alltrue([for port in [var.store.port, var.store.shard_aware_port, var.store.storage_port, var.store.ssl_storage_port] : port >= 1 && port <= 65535])
      && length(distinct([var.store.port, var.store.shard_aware_port, var.store.storage_port, var.store.ssl_storage_port])) == 4
    )
    error_message = "store.port, store.shard_aware_port, store.storage_port and store.ssl_storage_port must be four different ports between 1 and 65535."
  }

  validation {
    condition     = can(regex("^[A-Za-z][A-Za-z0-9_]{0,47}$", var.store.keyspace))
    error_message = "store.keyspace must be an unquoted CQL identifier of at most 48 characters."
  }
}

variable "dns" {
  description = "Public DNS. zone_name is an existing public Route 53 hosted zone, and clients connect to <endpoint_name>.<zone_name>."
  type = object({
    zone_name     = string
    endpoint_name = optional(string, "chat")
  })

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.dns.zone_name))
    error_message = "dns.zone_name must be a lowercase domain name without a trailing dot, for example chat.example.com; got \"${var.dns.zone_name}\"."
  }

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.dns.endpoint_name))
    error_message = "dns.endpoint_name must be one DNS label; got \"${var.dns.endpoint_name}\"."
  }
}

variable "token_secret_parameter" {
  description = "Name of the SSM SecureString parameter, in the hub's AWS region, that holds the token signing secret (at least 32 bytes). Edges read it on every start, and Terraform never reads or writes it."
  type        = string

  validation {
    condition     = can(regex("^(/[A-Za-z0-9_.-]+)+$", var.token_secret_parameter))
    error_message = "token_secret_parameter must be a hierarchical SSM parameter name such as /chatmesh/prod/token-secret; got \"${var.token_secret_parameter}\"."
  }
}

variable "topology_json" {
  description = "The resolved topology as JSON, with every host set to its instance's private IP. Edges and core workers read it as their --topology file."
  type        = string

  validation {
    condition     = can(jsondecode(var.topology_json).regions) && can(jsondecode(var.topology_json).hub.nodes)
    error_message = "topology_json must be a topology in JSON with hub.nodes and regions, as `chatmesh topology render --terraform` writes it."
  }
}

variable "images" {
  description = "Owner (an AWS account ID, or \"self\") and name patterns of the AMIs instances boot from. The newest match is used, and terraform/README.md lists what each image must contain."
  type = object({
    owner  = optional(string, "self")
    nats   = optional(string, "chatmesh-nats-*")
    app    = optional(string, "chatmesh-app-*")
    scylla = optional(string, "chatmesh-scylla-*")
  })
  default = {}
}

variable "monitoring_cidrs" {
  description = "IPv4 CIDRs that may read the NATS monitoring port of hub and leaf nodes. Empty closes the port."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for cidr in var.monitoring_cidrs : can(cidrnetmask(cidr))])
    error_message = "Every monitoring_cidrs entry must be an IPv4 CIDR such as 10.0.0.0/8."
  }
}

variable "flow_log_retention_days" {
  description = "Days CloudWatch Logs keeps each VPC's flow logs."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags added to every resource, next to Project = \"chatmesh\" and Deployment = <name>."
  type        = map(string)
  default     = {}
}
