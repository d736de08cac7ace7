debian_version = "11"
