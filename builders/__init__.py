"""Image builds from Packer-compatible templates (issue: ``stemforge build``). Not implemented yet: this package
will hold the template loader, the builder plugins (qemu, debian, file) and the post-processors."""
