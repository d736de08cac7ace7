# Pattern: a directory template split by concern, with an auto var file and a validated variable.
variable "debian_version" {
  type    = string
  default = "12"
  validation {
    condition     = contains(["11", "12"], var.debian_version)
    error_message = "The debian_version must be 11 or 12."
  }
}

variable "disk_size" {
  type    = number
  default = 10240
}

variable "mirror" {
  type    = string
  default = "https://deb.debian.org/debian"
}

variable "packages" {
  type    = list(string)
  default = ["curl", "ca-certificates"]
}
