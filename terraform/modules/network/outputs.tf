output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr" {
  description = "IPv4 CIDR of the VPC."
  value       = aws_vpc.this.cidr_block
}

output "aws_region" {
  description = "AWS region the VPC is in."
  value       = data.aws_region.current.name
}

output "availability_zones" {
  description = "Availability zone of each subnet index, in the order of the subnet CIDR lists."
  value       = local.zones
}

output "public_subnet_ids" {
  description = "IDs of the public subnets, in the order of public_subnet_cidrs."
  value       = aws_subnet.public[*].id
}

output "private_subnet_ids" {
  description = "IDs of the private subnets, in the order of private_subnet_cidrs."
  value       = aws_subnet.private[*].id
}

output "private_route_table_id" {
  description = "ID of the route table of every private subnet, where routes to peered VPCs go."
  value       = aws_route_table.private.id
}

output "kms_key_arn" {
  description = "ARN of the customer managed KMS key for the EBS volumes of this VPC."
  value       = aws_kms_key.this.arn
}
