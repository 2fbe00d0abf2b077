terraform {
  # 1.9 is the first release whose variable validations may refer to other
  # values of the module, which variables.tf relies on.
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
  }
}
