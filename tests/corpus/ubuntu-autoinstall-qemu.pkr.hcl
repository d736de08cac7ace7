# Pattern: an Ubuntu live-server ISO installed unattended (subiquity autoinstall over the builder's HTTP server).
packer {
  required_plugins {
    qemu = {
      version = "~> 1"
      source  = "github.com/hashicorp/qemu"
    }
  }
}

variable "iso_url" {
  type    = string
  default = "https://releases.ubuntu.com/22.04/ubuntu-22.04.4-live-server-amd64.iso"
}

variable "iso_checksum" {
  type    = string
  default = "file:https://releases.ubuntu.com/22.04/SHA256SUMS"
}

variable "ssh_password" {
  type      = string
  default   = "ubuntu"
  sensitive = true
}

locals {
  timestamp = regex_replace(timestamp(), "[- TZ:]", "")
  vm_name   = "ubuntu-2204-${local.timestamp}"
}

source "qemu" "ubuntu" {
  iso_url          = var.iso_url
  iso_checksum     = var.iso_checksum
  output_directory = "output-${source.name}"
  vm_name          = "${local.vm_name}.qcow2"
  disk_size        = "20G"
  format           = "qcow2"
  memory           = 2048
  cpus             = 2
  headless         = true
  net_device       = "virtio-net"
  disk_interface   = "virtio"
  http_directory   = "http"
  boot_wait        = "5s"
  boot_command = [
    "c<wait>",
    "linux /casper/vmlinuz --- autoinstall ds=\"nocloud-net;seedfrom=http://{{ .HTTPIP }}:{{ .HTTPPort }}/\"",
    "<enter><wait>",
    "initrd /casper/initrd<enter><wait>",
    "boot<enter>",
  ]
  ssh_username           = "ubuntu"
  ssh_password           = var.ssh_password
  ssh_timeout            = "30m"
  ssh_handshake_attempts = 50
  shutdown_command       = "echo '${var.ssh_password}' | sudo -S shutdown -P now"
}

build {
  sources = ["source.qemu.ubuntu"]

  provisioner "shell" {
    execute_command = "echo '${var.ssh_password}' | {{ .Vars }} sudo -S -E bash '{{ .Path }}'"
    inline = [
      "apt-get update",
      "apt-get -y upgrade",
      "cloud-init clean",
    ]
  }

  post-processor "manifest" {
    output     = "manifest.json"
    strip_path = true
  }
}
