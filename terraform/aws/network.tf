data "aws_availability_zones" "available" {
  state = "available"
}

locals {
  az        = var.availability_zone != "" ? var.availability_zone : data.aws_availability_zones.available.names[0]
  backup_az = length(data.aws_availability_zones.available.names) > 1 ? data.aws_availability_zones.available.names[1] : local.az
}

resource "aws_vpc" "default" {
  cidr_block = var.vpc_cidr
  tags       = { Name = var.env_name }
}

resource "aws_internet_gateway" "default" {
  vpc_id = aws_vpc.default.id
  tags   = { Name = var.env_name }
}

resource "aws_route_table" "default" {
  vpc_id = aws_vpc.default.id
  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.default.id
  }
  tags = { Name = var.env_name }
}

# The dynamic network's subnet (subnet_id): addresses chosen by AWS.
resource "aws_subnet" "default" {
  vpc_id                  = aws_vpc.default.id
  cidr_block              = cidrsubnet(aws_vpc.default.cidr_block, 8, 0)
  availability_zone       = local.az
  map_public_ip_on_launch = true
  tags                    = { Name = "${var.env_name}-dynamic" }
  depends_on              = [aws_internet_gateway.default]
}

# A second subnet in another zone (multi-AZ tests).
resource "aws_subnet" "backup" {
  vpc_id            = aws_vpc.default.id
  cidr_block        = cidrsubnet(aws_vpc.default.cidr_block, 8, 2)
  availability_zone = local.backup_az
  tags              = { Name = "${var.env_name}-backup" }
  depends_on        = [aws_internet_gateway.default]
}

# The manual network's subnet (manual_subnet_id): static addresses from static_range.
resource "aws_subnet" "manual" {
  vpc_id                  = aws_vpc.default.id
  cidr_block              = cidrsubnet(aws_vpc.default.cidr_block, 8, 4)
  availability_zone       = local.az
  map_public_ip_on_launch = true
  tags                    = { Name = "${var.env_name}-manual" }
  depends_on              = [aws_internet_gateway.default]
}

resource "aws_route_table_association" "default" {
  subnet_id      = aws_subnet.default.id
  route_table_id = aws_route_table.default.id
}

resource "aws_route_table_association" "backup" {
  subnet_id      = aws_subnet.backup.id
  route_table_id = aws_route_table.default.id
}

resource "aws_route_table_association" "manual" {
  subnet_id      = aws_subnet.manual.id
  route_table_id = aws_route_table.default.id
}

resource "aws_security_group" "allow_all" {
  vpc_id      = aws_vpc.default.id
  name        = "allow_all-${var.env_name}"
  description = "Allow all inbound and outgoing traffic"

  ingress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }

  tags = { Name = var.env_name }
}

resource "aws_eip" "director" {
  domain = "vpc"
  tags   = { Name = "${var.env_name}-director" }
}

resource "aws_eip" "deployment" {
  domain = "vpc"
  tags   = { Name = "${var.env_name}-deployment" }
}

resource "aws_key_pair" "director" {
  key_name   = var.env_name
  public_key = var.public_key
}
