# Where heavy stemcell images are uploaded before ImportSnapshot (images_bucket).
resource "aws_s3_bucket" "images" {
  bucket        = "${var.env_name}-images-${var.region}"
  force_destroy = true
}

# The director's blobstore (blobstore_bucket), as the CPI pipelines make it.
resource "aws_s3_bucket" "blobstore" {
  bucket        = "${var.env_name}-blobstore-${var.region}"
  force_destroy = true
}
