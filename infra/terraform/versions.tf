terraform {
  # 1.7 for the mocked provider in tests/plan.tftest.hcl.
  required_version = ">= 1.7"

  required_providers {
    # 5.100 is the version CI installs as a local plugin directory (there is no registry there).
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ Project = "ancsync", Environment = var.environment }, var.tags)
  }
}
