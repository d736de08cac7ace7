build {
  name        = "images"
  description = "two flavours of one source"

  source "qemu.base" {
    name = "small"
  }

  source "qemu.base" {
    name      = "large"
    disk_size = var.disk_size * 2
  }

  provisioner "shell" {
    inline = [
      "echo building ${source.name} (${source.type}) on ${build.Host}",
      "echo ${local.pw_line} | chpasswd",
    ]
    environment_vars = [for k, v in local.all_tags : "TAG_${upper(k)}=${v}"]
  }

  provisioner "shell" {
    only   = ["qemu.large"]
    inline = ["echo only large ${local.secret_token}"]
    pause_before = "2s"
    max_retries  = 3
    timeout      = "5m"
  }

  provisioner "file" {
    except      = ["qemu.large"]
    content     = <<-EOT
      %{ for n in local.names ~}
      flavour ${n}
      %{ endfor ~}
      auto=${var.from_auto}
    EOT
    destination = "/etc/flavours"
  }

  post-processors {
    post-processor "checksum" {
      checksum_types = ["sha256"]
      output         = "${source.name}.{{.ChecksumType}}"
    }
    post-processor "manifest" {
      output     = "manifest-${source.name}.json"
      strip_path = true
    }
  }
}
