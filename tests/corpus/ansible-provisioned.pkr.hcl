# Pattern: a qemu image configured by an Ansible playbook (the ansible plugin), then boxed for Vagrant.
packer {
  required_plugins {
    qemu = {
      version = ">= 1.0.0"
      source  = "github.com/hashicorp/qemu"
    }
    ansible = {
      version = "~> 1"
      source  = "github.com/hashicorp/ansible"
    }
  }
}

source "qemu" "rocky" {
  iso_url          = "https://download.rockylinux.org/pub/rocky/9/isos/x86_64/Rocky-9-latest-x86_64-boot.iso"
  iso_checksum     = "file:https://download.rockylinux.org/pub/rocky/9/isos/x86_64/CHECKSUM"
  ssh_username     = "root"
  ssh_password     = "packer"
  shutdown_command = "shutdown -P now"
}

build {
  sources = ["source.qemu.rocky"]

  provisioner "ansible" {
    playbook_file = "playbooks/harden.yml"
    user          = "root"
  }

  post-processor "vagrant" {
    output = "rocky-9-{{ .Provider }}.box"
  }
}
