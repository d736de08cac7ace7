"""The bare-metal deploy ramdisk: its offline build (:mod:`.build`) and the busybox scripts it runs (``init.sh``,
``lib.sh``, ``deploy.sh``, ``clean.sh``)."""
