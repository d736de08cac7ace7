# Flat values: `terraform output -json` reduced to {name: value} is the environment/metadata file the tests read.

output "vpc_id" {
  value = aws_vpc.default.id
}

output "region" {
  value = var.region
}

output "az" {
  value = aws_subnet.default.availability_zone
}

output "backup_az" {
  value = aws_subnet.backup.availability_zone
}

output "subnet_id" {
  value = aws_subnet.default.id
}

output "backup_subnet_id" {
  value = aws_subnet.backup.id
}

output "manual_subnet_id" {
  value = aws_subnet.manual.id
}

output "internal_cidr" {
  value = aws_vpc.default.cidr_block
}

output "manual_cidr" {
  value = aws_subnet.manual.cidr_block
}

output "internal_gw" {
  value = cidrhost(aws_vpc.default.cidr_block, 1)
}

output "manual_gw" {
  value = cidrhost(aws_subnet.manual.cidr_block, 1)
}

output "dns_recursor_ip" {
  value = cidrhost(aws_vpc.default.cidr_block, 2)
}

output "internal_ip" {
  value = cidrhost(aws_vpc.default.cidr_block, 6)
}

output "reserved_range" {
  value = "${cidrhost(aws_vpc.default.cidr_block, 2)}-${cidrhost(aws_vpc.default.cidr_block, 9)}"
}

output "static_range" {
  value = "${cidrhost(aws_vpc.default.cidr_block, 10)}-${cidrhost(aws_vpc.default.cidr_block, 30)}"
}

output "manual_reserved_range" {
  value = "${cidrhost(aws_subnet.manual.cidr_block, 1)}-${cidrhost(aws_subnet.manual.cidr_block, 9)}"
}

output "manual_static_range" {
  value = "${cidrhost(aws_subnet.manual.cidr_block, 10)}-${cidrhost(aws_subnet.manual.cidr_block, 30)}"
}

output "network_static_ip_1" {
  value = cidrhost(aws_vpc.default.cidr_block, 29)
}

output "network_static_ip_2" {
  value = cidrhost(aws_vpc.default.cidr_block, 30)
}

output "default_security_groups" {
  value = [aws_security_group.allow_all.id]
}

output "default_key_name" {
  value = aws_key_pair.director.key_name
}

output "external_ip" {
  value = aws_eip.director.public_ip
}

output "bats_eip" {
  value = aws_eip.deployment.public_ip
}

output "images_bucket" {
  value = aws_s3_bucket.images.id
}

output "blobstore_bucket" {
  value = aws_s3_bucket.blobstore.id
}

output "iam_instance_profile" {
  value = aws_iam_instance_profile.e2e.name
}

output "alb" {
  value = var.load_balancers ? aws_lb.default[0].id : null
}

output "alb_target_group" {
  value = var.load_balancers ? aws_lb_target_group.default[0].name : null
}

output "aws_kms_key_arn" {
  value = aws_kms_key.key.arn
}
