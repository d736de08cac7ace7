"""Packer's ``amazon-ebs`` builder: launch an instance from a source AMI, provision it, stop it, create an AMI,
copy it to every ``ami_regions`` region in parallel and tag it everywhere (see ``steps`` for the order).

Public API:

* ``PLUGIN`` / :class:`AmazonEbsBuilder` -- the builder type (``prepare``, ``steps``, ``artifact``).
* :class:`AmazonArtifact` -- Packer's amazon artifact: id ``us-east-1:ami-1,us-west-2:ami-2`` (sorted region:id
  pairs), ``state["amis"]`` and ``state["regions"]`` (region -> AMI id, what the light stemcell post-processor
  writes), ``state["snapshots"]``; ``destroy()`` deregisters every AMI and deletes its snapshots.
* ``ec2.AwsAccess`` (clients with tenacity retries), ``regions.AmiCopies`` (parallel copy with rollback) -- shared
  with the ``amazon-import`` post-processor.

Beyond Packer: a failed or interrupted copy removes the AMIs *and* snapshots already made in every region, and the
build region's AMI, unless ``-on-error=abort``; every AWS call is retried on throttling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from builders.builder_types._sdk.builder import ComposedBuilder
from builders.builder_types.amazon_ebs.config import BUILDER_ID, OPTIONS_SCHEMA, EbsConfig, prepare_config
from builders.builder_types.amazon_ebs.ec2 import AwsAccess
from builders.builder_types.amazon_ebs.regions import run_in_regions, uncancelled
from builders.builder_types.amazon_ebs.steps import SECRET_KEYS, build_steps
from builders.core import Artifact, ProvisionHook

__all__ = ["PLUGIN", "AmazonArtifact", "AmazonEbsBuilder", "multi_region_id"]


def multi_region_id(amis: Mapping[str, str]) -> str:
    """Packer's amazon artifact id: ``region:ami`` pairs sorted and joined by commas."""
    return ",".join(sorted(f"{region}:{ami}" for region, ami in amis.items()))


class AmazonArtifact(Artifact):
    """AMIs in one or more regions (Packer's ``awscommon.Artifact``)."""

    access: AwsAccess | None = None

    def describe(self) -> str:
        amis: Mapping[str, str] = self.state.get("amis") or {}
        lines = sorted(f"{region}: {ami}" for region, ami in amis.items())
        return "AMIs were created:\n" + "\n".join(lines) + "\n"

    def destroy(self) -> None:
        """Deregister every AMI and delete its snapshots (Packer only deregisters)."""
        access = self.access
        amis: Mapping[str, str] = self.state.get("amis") or {}
        if access is None or not amis:
            return
        cleanup = uncancelled(access)
        snapshots: Mapping[str, list[str]] = self.state.get("snapshots") or {}
        run_in_regions(
            cleanup,
            sorted(amis),
            lambda r, _a: cleanup.destroy_image(amis[r], r, snapshots.get(r)),
            parallel=16,
            what="destroying the AMIs",
        )


class AmazonEbsBuilder(ComposedBuilder[EbsConfig]):
    """The ``amazon-ebs`` builder type."""

    type_name: ClassVar[str] = "amazon-ebs"
    options_schema: ClassVar[dict[str, Any]] = OPTIONS_SCHEMA

    def prepare_config(self, options: Mapping[str, Any]) -> tuple[EbsConfig, list[str]]:
        cfg, warnings = prepare_config(options, *self.prepare_args(), prefix=self.label)
        cfg.access.cancel = self.ctx.cancel
        cfg.access.on_retry = self.ctx.ui.message
        return cfg, warnings

    def build_steps(self, cfg: EbsConfig, hook: ProvisionHook) -> Sequence[Any]:
        return build_steps(cfg, self.ctx, hook)

    def artifact(self, state: Mapping[str, Any]) -> Artifact | None:
        amis: dict[str, str] = dict(state.get("amis") or {})
        if not amis:
            return None
        snapshots = {r: list(s) for r, s in (state.get("snapshots") or {}).items() if r in amis}
        generated = {k: v for k, v in self.ctx.generated.items() if k not in SECRET_KEYS}
        artifact = AmazonArtifact(
            builder_id=BUILDER_ID,
            build_name=self.ctx.build_name,
            builder_type=self.type_name,
            files=[],
            artifact_id=multi_region_id(amis),
            state={
                "amis": amis,
                "regions": dict(amis),
                "snapshots": snapshots,
                "generated_data": generated,
                "ami_name": self.cfg.ami_name if self.cfg else "",
                "infrastructure": "aws",
                "build_region": self.cfg.region if self.cfg else "",
            },
        )
        artifact.access = self.cfg.access if self.cfg else None
        return artifact


PLUGIN = AmazonEbsBuilder
