# Pattern: start from a cloud image (disk_image) and seed cloud-init with a NoCloud "cidata" CD built from files.
variable "image_url" {
  type    = string
  default = "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img"
}

variable "hostname" {
  type    = string
  default = "builder"
}

source "qemu" "cloudimg" {
  iso_url          = var.image_url
  iso_checksum     = "file:https://cloud-images.ubuntu.com/noble/current/SHA256SUMS"
  disk_image       = true
  use_backing_file = false
  disk_size        = "8G"
  output_directory = "output-${var.hostname}"
  vm_name          = "${var.hostname}.qcow2"
  format           = "qcow2"
  cd_content = {
    "meta-data" = "instance-id: ${var.hostname}\nlocal-hostname: ${var.hostname}\n"
    "user-data" = <<-EOT
      #cloud-config
      ssh_pwauth: true
      chpasswd:
        expire: false
        users:
          - name: ubuntu
            password: ubuntu
            type: text
    EOT
  }
  cd_label         = "cidata"
  qemuargs         = [["-serial", "mon:stdio"]]
  ssh_username     = "ubuntu"
  ssh_password     = "ubuntu"
  ssh_timeout      = "10m"
  shutdown_command = "echo ubuntu | sudo -S shutdown -P now"
}

build {
  sources = ["source.qemu.cloudimg"]

  provisioner "shell" {
    inline = ["cloud-init status --wait", "sudo apt-get -y install qemu-guest-agent"]
  }
}
