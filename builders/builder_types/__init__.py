"""Builder types (``builders.core.BuilderType`` plugins), one module or package per template ``type`` (``-`` in
the type becomes ``_``), each exposing ``PLUGIN``: ``file`` (Packer's: a file as the artifact, for tests and
imports), ``null`` (Packer's: no machine, or an existing SSH host), ``qemu`` (Packer's qemu builder) and ``debian``
(an offline diskimage-builder-style build). Found by ``builders.registry.load_builder``."""
