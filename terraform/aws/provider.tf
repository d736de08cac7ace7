locals {
  services = ["ec2", "s3", "sts", "iam", "kms", "elb", "elbv2"]
  endpoints = merge(
    var.endpoint == "" ? {} : { for s in local.services : s => var.endpoint },
    var.endpoints,
  )
  # A custom endpoint (moto) has no real account, metadata API or credential check to make.
  custom = length(local.endpoints) > 0
}

provider "aws" {
  region     = var.region
  access_key = var.access_key == "" ? null : var.access_key
  secret_key = var.secret_key == "" ? null : var.secret_key

  skip_credentials_validation = local.custom
  skip_requesting_account_id  = local.custom
  skip_metadata_api_check     = local.custom
  skip_region_validation      = local.custom
  s3_use_path_style           = local.custom

  dynamic "endpoints" {
    for_each = local.custom ? [local.endpoints] : []
    content {
      ec2   = lookup(endpoints.value, "ec2", null)
      s3    = lookup(endpoints.value, "s3", null)
      sts   = lookup(endpoints.value, "sts", null)
      iam   = lookup(endpoints.value, "iam", null)
      kms   = lookup(endpoints.value, "kms", null)
      elb   = lookup(endpoints.value, "elb", null)
      elbv2 = lookup(endpoints.value, "elbv2", null)
    }
  }

  default_tags {
    tags = {
      "stemforge-env" = var.env_name
    }
  }
}
