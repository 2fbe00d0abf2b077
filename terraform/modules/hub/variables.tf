variable "deployment_name" {
  description = "Name of the deployment (the topology's name), used as a prefix of Name tags."
  type        = string
}

variable "settings" {
  description = "The root variable hub, with defaults applied: the hub NATS nodes with their rendered configs, and the core workers."
  type = object({
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
    instance_type        = string
    core_instance_type   = string
    jetstream_volume_gib = number
    core_volume_gib      = number
  })
}

variable "network" {
  description = "Outputs of the hub's network module."
  type = object({
    vpc_id             = string
    vpc_cidr           = string
    availability_zones = list(string)
    private_subnet_ids = list(string)
    kms_key_arn        = string
  })
}

variable "regions" {
  description = "What the hub and the core workers talk to in each chatmesh region, keyed by region name: the leaf node's private IP and client port, and the store nodes' private IPs."
  type = map(object({
    leaf_ip          = string
    leaf_client_port = number
    store_ips        = list(string)
  }))
}

variable "store" {
  description = "CQL ports of the ScyllaDB nodes that core workers connect to."
  type = object({
    port             = number
    shard_aware_port = number
  })
}

variable "services" {
  description = "What the instances boot with: the resolved topology JSON that core workers read, the AMI name patterns, and the CIDRs that may read NATS monitoring."
  type = object({
    topology_json = string
    images = object({
      owner = string
      nats  = string
      app   = string
    })
    monitoring_cidrs = list(string)
  })
}
