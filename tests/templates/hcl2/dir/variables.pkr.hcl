packer {
  required_version = ">= 1.7.0"
  required_plugins {
    qemu = {
      version = ">= 1.0.9"
      source  = "github.com/hashicorp/qemu"
    }
  }
}

variable "disk_size" {
  type        = number
  default     = 4096
  description = "disk size in MB"
}

variable "root_password" {
  type      = string
  default   = "hunter2-root"
  sensitive = true
}

variable "flavours" {
  type = list(object({
    name   = string
    memory = optional(number, 1024)
  }))
  default = [{ name = "small" }, { name = "large", memory = 4096 }]
}

variable "region" {
  type    = string
  default = "eu-west-1"
  validation {
    condition     = can(regex("^[a-z]{2}-[a-z]+-[0-9]$", var.region))
    error_message = "The region must look like eu-west-1."
  }
}

variable "tags" {
  type    = map(string)
  default = {}
}

variable "from_auto" {
  type    = string
  default = "default"
}
