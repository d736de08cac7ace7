# Pattern: a child image built on a "golden" parent tracked in HCP Packer.
data "hcp-packer-version" "golden" {
  bucket_name  = "golden-base"
  channel_name = "production"
}

data "hcp-packer-artifact" "golden" {
  bucket_name         = "golden-base"
  version_fingerprint = data.hcp-packer-version.golden.fingerprint
  platform            = "aws"
  region              = "us-east-1"
}

source "amazon-ebs" "app" {
  region        = "us-east-1"
  source_ami    = data.hcp-packer-artifact.golden.external_identifier
  instance_type = "t3.small"
  ssh_username  = "ubuntu"
  ami_name      = "app-{{ timestamp }}"
}

build {
  sources = ["source.amazon-ebs.app"]

  hcp_packer_registry {
    bucket_name = "app"
    description = "the app image on the golden base"
  }
}
