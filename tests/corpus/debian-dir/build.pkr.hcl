build {
  name = "debian"
  sources = ["source.qemu.debian"]

  provisioner "shell" {
    inline = ["apt-get -y install ${join(" ", var.packages)}"]
  }

  post-processors {
    post-processor "checksum" {
      checksum_types = ["sha256"]
    }
    post-processor "manifest" {
      output = "manifest-${source.name}.json"
    }
  }
}
