data "amazon-ami" "ubuntu" {
  region              = "us-east-1"
  custom_endpoint_ec2 = var.ec2_endpoint
  filters = {
    name                = "ubuntu/images/*"
    root-device-type    = "ebs"
  }
  owners      = ["099720109477"]
  most_recent = true
}

locals {
  prefix = "stemforge-${var.test_id}"
  tags = {
    stemforge-test = var.test_id
    base           = data.amazon-ami.ubuntu.name
  }
}

source "qemu" "base" {
  iso_url          = var.image
  iso_checksum     = "none"
  disk_image       = true
  use_backing_file = true
  disk_size        = "192M"
  accelerator      = "tcg"
  headless         = true
  communicator     = "none"
  boot_wait        = "1s"
  shutdown_timeout = "150s"
  output_directory = "${var.out}/output-${source.name}"
  vm_name          = "${local.prefix}-${source.name}.qcow2"
}

source "amazon-ebs" "base" {
  region              = "us-east-1"
  custom_endpoint_ec2 = var.ec2_endpoint
  access_key          = "AKIASTEMFORGEHCL2E2E"
  secret_key          = var.aws_secret_key
  source_ami          = data.amazon-ami.ubuntu.id
  instance_type       = "t3.micro"
  communicator        = "none"
  ami_name            = "${local.prefix}-${source.name} {{timestamp}}"
  tags                = local.tags
  aws_polling {
    delay_seconds = 1
    max_attempts  = 120
  }
  dynamic "launch_block_device_mappings" {
    for_each = var.extra_disks
    iterator = disk
    content {
      device_name           = disk.value.device
      volume_size           = disk.value.size
      delete_on_termination = true
    }
  }
}

build {
  name = "e2e"

  source "qemu.base" {
    name = "tcg"
  }

  source "amazon-ebs.base" {
    name            = "ami"
    ami_description = "from ${data.amazon-ami.ubuntu.id} by ${source.name}"
  }

  provisioner "shell-local" {
    only   = ["amazon-ebs.ami"]
    inline = ["echo provisioned ${source.type}.${source.name} with ${var.aws_secret_key}"]
  }

  post-processor "manifest" {
    output = "${var.out}/manifest.json"
  }
}
