"""Terraform-made test environments (``terraform/aws/``) and the Python module that applies and destroys them."""
