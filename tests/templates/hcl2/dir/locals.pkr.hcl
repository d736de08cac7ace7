locals {
  stamp      = "fixed"
  image_name = "img-${var.disk_size}-${local.stamp}"
  all_tags   = merge({ builder = "stemforge" }, var.tags)
  by_name    = { for f in var.flavours : f.name => f.memory }
  names      = var.flavours[*].name
  pw_line    = "root:${var.root_password}"
}

local "secret_token" {
  expression = "tok-${upper(local.stamp)}-42"
  sensitive  = true
}
