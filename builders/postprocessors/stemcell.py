"""``stemcell``: package the build as a BOSH stemcell.

Heavy (the default for an artifact with an image file): the image goes inside the tarball
(``stemcells.tarball.write_stemcell``). Light (the default after a fan-out, or ``"light": true``): the tarball's
``image`` is empty and ``cloud_properties.<image_id_key>`` maps every region (fan-out destination name) to the
copy's id there -- exactly what the libvirt CPI's ``create_stemcell`` reads (``image_id: {region: volume}``); for
AWS set ``image_id_key: "ami"``. ``image_ref: "name"`` records the image name instead of the full id (a libvirt
storage pool volume is addressed by its name).

Options: ``name`` (default ``bosh-libvirt-kvm-<os>-go_agent``), ``version`` (required), ``os`` (required),
``stemcell_formats`` (default ``libvirt-<qcow2|raw>`` from the image), ``cloud_properties`` (extra keys),
``output_directory`` (default ``.``, created if missing), ``light``, ``image_id_key``, ``image_ref``, ``source``
(which artifact file is the image when there are several), ``api_version``. The tarball is written atomically;
an existing one is an error unless ``-force``.

AWS (the artifact of ``amazon-ebs`` / ``amazon-import``, whose ``state["amis"]`` maps region -> AMI id): a light
AWS stemcell as bosh-aws-cpi reads it -- ``cloud_properties: {ami: {region: ami-id, ...}, name, version,
infrastructure: aws, architecture, root_device_name, virtualization_type}`` (every default overridable through
``cloud_properties``), ``stemcell_formats: [aws-light]``, the name defaulting to ``bosh-aws-xen-hvm-<os>-go_agent``.
The input artifact is kept (the stemcell refers to those AMIs: destroying it would deregister them).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, ClassVar, Final

from builders.core import Artifact, BuildError
from builders.postprocessors import ValidatedPostProcessor, render_output
from builders.registry import closed_object

BUILDER_ID: Final = "stemforge.post-processor.stemcell"
#: Artifacts whose ``state["amis"]`` are AMIs (Packer's amazon builder ids and our amazon-import).
AMAZON_BUILDER_IDS: Final = frozenset({"mitchellh.amazonebs", "mitchellh.amazon.ebssurrogate",
                                       "mitchellh.amazon.instance", "packer.post-processor.amazon-import"})
#: bosh-aws-cpi's light stemcell cloud properties besides the AMI map (the CPI reads ``ami``; the rest is what
#: BOSH's own light AWS stemcells carry).
AWS_DEFAULTS: Final = {"architecture": "x86_64", "root_device_name": "/dev/sda1", "virtualization_type": "hvm"}


def is_amazon(artifact: Artifact) -> bool:
    """True for an artifact made of AMIs."""
    return artifact.builder_id in AMAZON_BUILDER_IDS or (
        artifact.state.get("infrastructure") == "aws" and bool(artifact.state.get("amis")))


class StemcellPostProcessor(ValidatedPostProcessor):
    type_name: ClassVar[str] = "stemcell"
    options_schema: ClassVar[dict[str, Any]] = closed_object(
        {
            "name": {"type": "string", "minLength": 1},
            "version": {"type": "string", "minLength": 1},
            "os": {"type": "string", "minLength": 1},
            "stemcell_formats": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
            "cloud_properties": {"type": "object"},
            "output_directory": {"type": "string", "minLength": 1},
            "light": {"type": "boolean"},
            "image_id_key": {"type": "string", "minLength": 1},
            "image_ref": {"enum": ["id", "name"]},
            "source": {"type": "string", "minLength": 1},
            "api_version": {"type": "integer", "minimum": 1},
        }, required=["version", "os"])

    def post_process(self, artifact: Artifact) -> tuple[Artifact, bool]:
        from stemcells.errors import StemcellError
        from stemcells.tarball import detect_image_format, write_stemcell

        options = self.options
        self.ctx.check_cancelled()
        aws = is_amazon(artifact)
        regions: dict[str, str] = dict(artifact.state.get("amis" if aws else "regions") or {})
        light = bool(options.get("light", bool(regions)))
        if aws and not light:
            raise BuildError("stemcell: the input is AMIs (an amazon artifact): only a light stemcell can be made "
                             "from it (remove \"light\": false)")
        os_name = render_output(self.ctx, str(options["os"]), {}, key="os")
        default_name = f"bosh-aws-xen-hvm-{os_name}-go_agent" if aws else f"bosh-libvirt-kvm-{os_name}-go_agent"
        name = render_output(self.ctx, str(options.get("name") or default_name), {}, key="name")
        version = render_output(self.ctx, str(options["version"]), {}, key="version")
        out_dir = Path(render_output(self.ctx, str(options.get("output_directory") or "."), {},
                                     key="output_directory"))
        cloud_properties: dict[str, Any] = dict(options.get("cloud_properties") or {})
        root_image: Path | None = None
        if light:
            if not regions:
                raise BuildError("stemcell: a light stemcell needs the per-region ids of a fan-out; put the stemcell "
                                 "post-processor after 'fanout' in the same chain")
            key = str(options.get("image_id_key") or ("ami" if aws else "image_id"))
            if aws:
                cloud_properties = {**AWS_DEFAULTS, "name": name, "version": version, "infrastructure": "aws",
                                    **cloud_properties}
            if options.get("image_ref") == "name" and not aws:
                image_name = str(artifact.state.get("image_name") or "")
                if not image_name:
                    raise BuildError("stemcell: image_ref 'name' needs the fan-out's image_name")
                cloud_properties[key] = {region: image_name for region in sorted(regions)}
            else:
                cloud_properties[key] = dict(sorted(regions.items()))
            fmt = "light" if aws else str(artifact.state.get("format")
                                          or _format_from_name(str(artifact.state.get("image_name", ""))))
        else:
            root_image = self._image(artifact)
            try:
                fmt = detect_image_format(root_image)
            except StemcellError as exc:
                raise BuildError(f"stemcell: {exc}") from exc
        formats = list(options.get("stemcell_formats") or (["aws-light"] if aws else [f"libvirt-{fmt}"]))
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            path = write_stemcell(
                out_dir, name=name, version=version, operating_system=os_name, stemcell_formats=formats,
                cloud_properties=cloud_properties, root_image=root_image,
                api_version=int(options.get("api_version", 3)), overwrite=self.ctx.force,
                progress=self.ctx.ui.message)
        except (StemcellError, OSError) as exc:
            raise BuildError(f"stemcell: {exc}") from exc
        self.ctx.ui.say(f"Wrote {'light ' if light else ''}stemcell {path}")
        state: dict[str, Any] = {"stemcell": str(path), "light": light, "name": name, "version": version,
                                 "stemcell_formats": formats}
        if regions:
            state["regions"] = regions
        if aws:
            state["amis"] = regions
        # an AWS light stemcell refers to the AMIs: the input artifact must survive (destroying it deregisters them)
        return Artifact(BUILDER_ID, artifact.build_name, artifact.builder_type, [path], str(path), state), aws

    def _image(self, artifact: Artifact) -> Path:
        files = [Path(f) for f in artifact.files if Path(f).is_file()]
        if not files and artifact.state.get("source_file") and Path(artifact.state["source_file"]).is_file():
            files = [Path(artifact.state["source_file"])]
        pattern = self.options.get("source")
        if pattern:
            files = [f for f in files if fnmatch.fnmatch(f.name, pattern) or str(f) == pattern]
        if len(files) != 1:
            raise BuildError(f"stemcell: a heavy stemcell needs exactly one image file, the artifact has "
                             f"{len(files)} ({', '.join(f.name for f in files) or 'none'}); set 'source'")
        return files[0]


def _format_from_name(name: str) -> str:
    return "raw" if name.endswith((".raw", ".img")) else "qcow2"


PLUGIN = StemcellPostProcessor
