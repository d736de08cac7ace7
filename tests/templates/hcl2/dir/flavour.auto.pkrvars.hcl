from_auto = "from-auto-file"
