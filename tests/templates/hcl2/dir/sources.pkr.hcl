source "qemu" "base" {
  iso_url          = "https://example.invalid/debian.iso"
  iso_checksum     = "none"
  disk_size        = var.disk_size
  memory           = lookup(local.by_name, source.name, 2048)
  vm_name          = "${local.image_name}-${source.name}.qcow2"
  output_directory = "output-${source.name}"
  ssh_username     = "root"
  ssh_password     = var.root_password
  shutdown_command = "poweroff"
  headless         = true
  qemuargs = [
    ["-serial", "stdio"],
  ]
}
