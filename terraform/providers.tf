# Terraform cannot create provider configurations from a map (a provider block
# takes no for_each, and a module block's providers argument takes no
# expression), so there is one alias per AWS region that chatmesh regions may
# use, named after the region. main.tf has the matching module blocks, and
# var.regions accepts only these AWS regions (local.supported_aws_regions).
# The hub's alias takes its region from the variables, because there is
# exactly one hub.

provider "aws" {
  alias  = "hub"
  region = var.hub.aws_region

  default_tags {
    tags = local.default_tags
  }
}

provider "aws" {
  alias  = "ap_south_1"
  region = "ap-south-1"

  default_tags {
    tags = local.default_tags
  }
}

provider "aws" {
  alias  = "eu_west_1"
  region = "eu-west-1"

  default_tags {
    tags = local.default_tags
  }
}

provider "aws" {
  alias  = "us_east_1"
  region = "us-east-1"

  default_tags {
    tags = local.default_tags
  }
}
