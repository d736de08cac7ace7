locals {
  iso = {
    "11" = "https://cdimage.debian.org/cdimage/archive/11.9.0/amd64/iso-cd/debian-11.9.0-amd64-netinst.iso"
    "12" = "https://cdimage.debian.org/debian-cd/current/amd64/iso-cd/debian-12.5.0-amd64-netinst.iso"
  }
}

source "qemu" "debian" {
  iso_url          = local.iso[var.debian_version]
  iso_checksum     = "none"
  disk_size        = var.disk_size
  vm_name          = "debian-${var.debian_version}.qcow2"
  http_content     = { "/preseed.cfg" = templatefile("${path.root}/preseed.pkrtpl", { mirror = var.mirror }) }
  boot_command     = ["<esc><wait>auto url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/preseed.cfg<enter>"]
  ssh_username     = "root"
  ssh_password     = "debian"
  shutdown_command = "poweroff"
}
