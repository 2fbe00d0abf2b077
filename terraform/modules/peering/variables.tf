variable "requests" {
  description = "Peering connections that other VPCs requested to this VPC, keyed by the requester's name (a chatmesh region). Each one is accepted and routed."
  type = map(object({
    connection_id = string
    peer_cidr     = string
  }))
}

variable "route_table_id" {
  description = "Route table of this VPC's private subnets, which gets one route per peer VPC."
  type        = string
}

variable "name" {
  description = "Name of this side of the peering, used in Name tags: \"hub\" or a chatmesh region."
  type        = string
}
