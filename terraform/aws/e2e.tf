# What the CPI pipelines' integration and end-2-end tests use beyond the network: an application load balancer
# (var.load_balancers; against moto its creation waits about a minute), an instance profile, a KMS key for
# encrypted disks and an S3 VPC endpoint. Left out: the pipelines' classic ELBs (hashicorp/aws 5.100 crashes
# creating one against moto) and IPv6.

resource "aws_vpc_endpoint" "private_s3" {
  vpc_id          = aws_vpc.default.id
  service_name    = "com.amazonaws.${var.region}.s3"
  route_table_ids = [aws_route_table.default.id]
}

resource "aws_lb" "default" {
  count              = var.load_balancers ? 1 : 0
  name               = "${var.env_name}-alb"
  load_balancer_type = "application"
  subnets            = [aws_subnet.default.id, aws_subnet.backup.id]
  security_groups    = [aws_security_group.allow_all.id]
  tags               = { Name = var.env_name }
}

resource "aws_lb_target_group" "default" {
  count    = var.load_balancers ? 1 : 0
  name     = "${var.env_name}-tg"
  port     = 80
  protocol = "HTTP"
  vpc_id   = aws_vpc.default.id
  health_check {
    interval = 5
    timeout  = 4
    path     = "/"
    matcher  = "200"
  }
  tags = { Name = var.env_name }
}

resource "aws_lb_listener" "default" {
  count             = var.load_balancers ? 1 : 0
  load_balancer_arn = aws_lb.default[0].arn
  port              = 80
  protocol          = "HTTP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.default[0].arn
  }
}

resource "aws_iam_role" "e2e" {
  name_prefix = var.env_name
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Action    = "sts:AssumeRole"
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
    }]
  })
}

resource "aws_iam_role_policy" "e2e" {
  name = "${var.env_name}-policy"
  role = aws_iam_role.e2e.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect = "Allow"
        Action = ["ec2:AssociateAddress", "ec2:AttachVolume", "ec2:CreateVolume", "ec2:DeleteSnapshot",
          "ec2:DeleteVolume", "ec2:Describe*", "ec2:DetachVolume", "ec2:CreateSnapshot", "ec2:CreateTags",
          "ec2:RunInstances", "ec2:TerminateInstances", "ec2:DeregisterImage", "ec2:DescribeImages",
        "ec2:RegisterImage"]
        Resource = "*"
      },
      { Effect = "Allow", Action = "elasticloadbalancing:*", Resource = "*" },
    ]
  })
}

resource "aws_iam_instance_profile" "e2e" {
  name_prefix = var.env_name
  role        = aws_iam_role.e2e.name
}

resource "aws_kms_key" "key" {
  description             = "${var.env_name}-kms-key"
  deletion_window_in_days = 7
}
