variable "name" {
  description = "Name tag prefix of every resource, for example \"chatmesh-prod-eu-west\"."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,62}$", var.name))
    error_message = "name must be 1-63 characters: lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "vpc_cidr" {
  description = "IPv4 CIDR of the VPC, a /16 to /20 that overlaps no other VPC of the deployment."
  type        = string

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && try(tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 20, false)
    error_message = "vpc_cidr must be an IPv4 CIDR with a prefix length from /16 to /20, for example 10.1.0.0/16."
  }
}

variable "availability_zones" {
  description = "Names of the availability zones, one per subnet index, for example [\"eu-west-1a\", \"eu-west-1b\", \"eu-west-1c\"]. Naming them keeps every subnet, and every fixed address, in the same zone when AWS adds zones to the region."
  type        = list(string)

  validation {
    condition     = contains([2, 3], length(var.availability_zones)) && length(distinct(var.availability_zones)) == length(var.availability_zones)
    error_message = "availability_zones must name 2 or 3 different zones."
  }
}

variable "public_subnet_cidrs" {
  description = "CIDRs of the public subnets, one per availability zone in zone order. They hold the NAT gateway and the load balancer."
  type        = list(string)

  validation {
    condition     = length(var.public_subnet_cidrs) == length(var.availability_zones) && alltrue([for cidr in var.public_subnet_cidrs : can(cidrnetmask(cidr))])
    error_message = "public_subnet_cidrs must list one IPv4 CIDR per availability zone."
  }
}

variable "private_subnet_cidrs" {
  description = "CIDRs of the private subnets, one per availability zone in zone order. Every instance runs in one of them."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_cidrs) == length(var.availability_zones) && alltrue([for cidr in var.private_subnet_cidrs : can(cidrnetmask(cidr))])
    error_message = "private_subnet_cidrs must list one IPv4 CIDR per availability zone."
  }
}

variable "flow_log_retention_days" {
  description = "Days CloudWatch Logs keeps the VPC flow logs."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.flow_log_retention_days)
    error_message = "flow_log_retention_days must be a retention period CloudWatch Logs accepts, for example 365."
  }
}
