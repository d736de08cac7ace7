"""Packer's ``shell-local`` post-processor (packer ``post-processor/shell-local/post-processor.go``): run commands
or scripts on the build host once per artifact, with the same options and behaviour as the ``shell-local``
provisioner (packer-plugin-sdk ``shell-local``: ``command``/``inline``/``script``/``scripts``, ``environment_vars``,
``env``, ``execute_command``, ``only_on``, ``valid_exit_codes`` ...), which this delegates to.

Like Packer: a one-element ``execute_command`` (the post-processor's old string form) runs through ``sh -c``;
the input artifact is passed through unchanged and always kept (Packer forces ``keep_input_artifact`` so the
chain is not broken; use ``artifice`` to replace it).
"""

from __future__ import annotations

from typing import Any, ClassVar

from builders.core import Artifact, PostProcessor
from builders.postprocessors import validated_options
from builders.provisioners.shell_local import ShellLocalProvisioner


class ShellLocalPostProcessor(PostProcessor):
    type_name: ClassVar[str] = "shell-local"
    render_at_runtime: ClassVar[frozenset[str]] = ShellLocalProvisioner.render_at_runtime
    options_schema: ClassVar[dict[str, Any]] = ShellLocalProvisioner.options_schema

    def prepare(self) -> list[str]:
        options = validated_options(self)
        command = options.get("execute_command")
        if isinstance(command, list) and len(command) == 1:
            options["execute_command"] = ["sh", "-c", *command]
        self.runner = ShellLocalProvisioner(options, self.ctx)
        return self.runner.prepare()

    def post_process(self, artifact: Artifact) -> tuple[Artifact, bool]:
        if not hasattr(self, "runner"):
            self.prepare()
        self.runner.provision(None)  # type: ignore[arg-type]  # runs on the host: no machine communicator
        return artifact, True


PLUGIN = ShellLocalPostProcessor
