"""The bare-metal deploy ramdisk: its offline build (:mod:`.build`) and the busybox scripts it runs (``init.sh``,
``lib.sh``, ``deploy.sh``, ``clean.sh``, ``inspect.sh``), which talk to ``metal serve`` over HTTP only.

May import: ``stemcells`` (the test image's build helpers) and ``stemforge_base``; nothing of the provider,
``serve/`` or ``lab/`` (the scripts get their job as the shell assignments ``instructions.py`` renders, over HTTP).
"""
