"""The bare-metal provider: an inventory of servers driven through Ironic-style hardware interfaces
(power, management, boot, deploy), the provisioning services they PXE/iPXE-boot from, and the CPI methods on top."""
