variable "env_name" {
  description = "Name prefix of everything this environment makes (tags, key pair, security group, buckets, load balancer)."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,26}[a-z0-9]$", var.env_name))
    error_message = "env_name: 2-28 characters of lowercase letters, digits and '-', not starting or ending with '-' (it names S3 buckets and load balancers)."
  }
}

variable "region" {
  description = "AWS region."
  type        = string
}

variable "access_key" {
  description = "AWS access key id (empty: the provider's default credential chain)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "secret_key" {
  description = "AWS secret access key (empty: the provider's default credential chain)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "endpoint" {
  description = "One endpoint URL for every service (the moto server); empty for real AWS."
  type        = string
  default     = ""
}

variable "endpoints" {
  description = "Per-service endpoint URLs (ec2, s3, sts, iam, kms, elb, elbv2); they override var.endpoint."
  type        = map(string)
  default     = {}
}

variable "public_key" {
  description = "OpenSSH public key of the environment's key pair (default_key_name)."
  type        = string
}

variable "availability_zone" {
  description = "Availability zone of the subnets (empty: the region's first)."
  type        = string
  default     = ""
}

variable "vpc_cidr" {
  description = "IPv4 CIDR of the VPC; the subnets are its /24s 0 (dynamic), 1 (backup) and 4 (manual)."
  type        = string
  default     = "10.0.0.0/16"
}

variable "load_balancers" {
  description = "Make the application load balancer, its target group and listener (outputs alb, alb_target_group)."
  type        = bool
  default     = true
}
