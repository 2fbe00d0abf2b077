variable "name" {
  description = "Name of the chatmesh region, for example \"eu-west\". It is the leaf's JetStream domain and the ScyllaDB datacenter name."
  type        = string

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$", var.name))
    error_message = "name must be a chatmesh region name: 1-32 lowercase letters, digits and hyphens."
  }
}

variable "deployment_name" {
  description = "Name of the deployment (the topology's name), used as a prefix of Name tags."
  type        = string
}

variable "settings" {
  description = "This region's entry of the root variable regions, with defaults applied: the leaf, the edges, the store nodes and the load balancer."
  type = object({
    leaf = object({
      private_ip           = string
      subnet_index         = number
      client_port          = number
      monitor_port         = number
      nats_config          = string
      instance_type        = string
      jetstream_volume_gib = number
    })
    edges = map(object({
      private_ip   = string
      subnet_index = number
      port         = number
    }))
    edge_instance_type = string
    store = object({
      replication_factor = number
      nodes = map(object({
        private_ip   = string
        subnet_index = number
      }))
      instance_type = string
      volume_gib    = number
    })
    load_balancer = object({
      deletion_protection = bool
      idle_timeout_s      = number
      access_logs_bucket  = string
    })
  })
}

variable "network" {
  description = "Outputs of this region's network module."
  type = object({
    vpc_id                 = string
    vpc_cidr               = string
    aws_region             = string
    availability_zones     = list(string)
    public_subnet_ids      = list(string)
    private_subnet_ids     = list(string)
    private_route_table_id = string
    kms_key_arn            = string
  })
}

variable "hub" {
  description = "Where the hub is: its VPC (the peering target), the private IPs and leaf ports of the hub NATS nodes, and the private IPs of the core workers."
  type = object({
    aws_region = string
    vpc_id     = string
    vpc_cidr   = string
    node_ips   = list(string)
    leaf_ports = list(number)
    core_ips   = list(string)
  })
}

variable "peers" {
  description = "Every other chatmesh region, keyed by name: its VPC and the private IPs of its store nodes. This region requests peering to the peers whose names sort after its own."
  type = map(object({
    aws_region = string
    vpc_id     = string
    vpc_cidr   = string
    store_ips  = list(string)
  }))
}

variable "store" {
  description = "The ScyllaDB cluster: backend (\"sqlite\" runs no store nodes), CQL ports, internode ports (plain and TLS), cluster name and seed addresses across all regions."
  type = object({
    backend          = string
    port             = number
    shard_aware_port = number
    storage_port     = number
    ssl_storage_port = number
    cluster_name     = string
    seeds            = list(string)
  })
}

variable "services" {
  description = "What every instance boots with: the resolved topology JSON that edges read, the SSM parameter that holds the token secret, the AMI name patterns, and the CIDRs that may read NATS monitoring."
  type = object({
    topology_json           = string
    token_secret_parameter  = string
    token_secret_aws_region = string
    images = object({
      owner  = string
      nats   = string
      app    = string
      scylla = string
    })
    monitoring_cidrs = list(string)
  })
}

variable "dns" {
  description = "The public Route 53 zone (ID and name) and the endpoint label. Clients connect to <endpoint_name>.<zone_name>, and each edge also gets <edge>.<endpoint_name>.<zone_name>."
  type = object({
    zone_id       = string
    zone_name     = string
    endpoint_name = string
  })
}
