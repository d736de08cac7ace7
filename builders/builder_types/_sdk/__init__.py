"""The config parts every stemforge builder embeds, after packer-plugin-sdk's shared configs.

A Packer builder's ``Config`` embeds the SDK's structs (``communicator.Config``, ``commonsteps.HTTPConfig``,
``commonsteps.ISOConfig``, ``bootcommand.BootConfig``, ``shutdowncommand.ShutdownConfig``) and its ``Prepare``
calls each part's ``Prepare``, appending every returned error. Here each part is a small keyword-only dataclass
with one ``prepare_<part>(opts)`` method; a builder's config class inherits the parts it embeds (fields stay flat,
as Go's embedding promotes them) and its ``prepare_config`` calls each part once.

Contract of every part: ``opts`` holds the options *after* ``builders.registry.validate_options`` (the only schema
check: unknown keys and types are reported there, in Packer's words, and values arrive weakly decoded); a part
applies Packer's defaults, checks the rules between its own keys and appends each problem to ``opts.errors`` and
each warning to ``opts.warnings`` (one line each, naming the key). It never raises for bad input.

Modules: :mod:`.options` (the collector and its value rules), :mod:`.communicator` (``CommConfig`` and Packer's
``StepConnect``), :mod:`.http`, :mod:`.iso`, :mod:`.boot`, :mod:`.shutdown`, and :mod:`.builder`
(``ComposedBuilder``: ``prepare`` = ``validate_options`` + the builder's ``prepare_config``). The option tables of
the SDK structs are in ``builders.builder_types._sdk_options``.
"""
