"""Test harnesses (no tests here), imported as ``tests.harness.<name>``: ``libvirt`` (a private pool and state
directory, a director-style ``bin/cpi`` runner), ``metal`` (the emulated bare-metal lab), ``terraform`` (the AWS
environment against moto), ``aws`` (the AWS CPI runner, test AMIs, a fault-injecting proxy), ``qemu`` (qemu builder
contexts and leftover checks) and ``recording_ui`` (a recording ``builders.core.Ui``)."""
