# End-to-end HCL2 directory template: a qemu build (TCG) and an amazon-ebs build (loopback moto) from one build
# block, with variables, locals, a dynamic block, a data source and two source overrides.
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    qemu = {
      version = ">= 1.0.0"
      source  = "github.com/hashicorp/qemu"
    }
    amazon = {
      version = ">= 1.2.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}

variable "image" {
  type        = string
  description = "the bootable disk image the qemu build starts from"
}

variable "out" {
  type = string
}

variable "ec2_endpoint" {
  type = string
}

variable "aws_secret_key" {
  type      = string
  sensitive = true
}

variable "test_id" {
  type    = string
  default = "e2e"
}

variable "extra_disks" {
  type = list(object({
    device = string
    size   = optional(number, 1)
  }))
  default = [{ device = "/dev/sdb" }, { device = "/dev/sdc", size = 2 }]
}
