"""Test harnesses (no tests here), imported as ``tests.harness.<name>``: ``libvirt`` (a private pool and state
directory, a director-style ``bin/cpi`` runner), ``metal`` (the emulated bare-metal lab), ``redfish`` (a
sushy-emulator and a ramdisk event player), ``ramdisk_rig`` (the deploy ramdisk in plain QEMU), ``terraform`` (the
AWS environment against moto), ``aws`` (the AWS CPI runner, test AMIs, loopback EC2 proxies, a moto amazon-ebs
builder), ``qemu`` (qemu builder contexts and leftover checks), ``builds`` (a post-processor build context, the
``stemforge`` CLI), ``sshd`` (an OpenSSH server on loopback), ``hostile`` (hostile images and tar headers),
``bench`` (the benchmark scripts) and ``recording_ui`` (a recording ``builders.core.Ui``).

Fixtures shared by one area live in that area's ``conftest.py`` (``tests/aws/``, ``tests/builders/``,
``tests/metal/``); session-wide ones (the test stemcell, the libvirt session, moto) in ``tests/conftest.py``."""
