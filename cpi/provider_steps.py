"""create_vm as Packer-style steps, the same way for every provider (libvirt, AWS, bare metal).

* :class:`ProviderStep`: a create_vm step holding what it works with (``host``: the provider, seen by each provider's
  steps through a small protocol of what they use, so step modules never import their provider module) and the
  ``plan`` (everything create_vm decided before touching anything). Each step records what it creates in the shared
  state dict; its ``cleanup`` removes exactly that.
* :func:`run_create_vm`: runs the steps on :class:`stemforge_base.steps.StepRunner` (every started step's cleanup runs
  in reverse order on any failure, cancellation or armed failpoint ``after:<step>``) and reports a failure the way
  :meth:`cpi.provider.VMs.create_vm` promises, as ``VMCreationFailed``: one raised by a step passes unchanged; another
  ``CpiError`` keeps its message and ``ok_to_retry`` behind ``<where>: ``; an exception type listed in ``passthrough``
  propagates as it is (the caller handles it, e.g. bare metal tries another server); any other exception becomes
  ``<where>: <message>`` with the message and retry hint ``describe`` gives, else ``<Type>: <text>``, not retryable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from cpi.errors import CpiError, VMCreationFailed
from stemforge_base.steps import Step, StepRunner

HostT = TypeVar("HostT")
PlanT = TypeVar("PlanT")

#: ``describe(exc)`` -> (message, ok_to_retry) for an exception a provider knows how to word, or None.
Describe = Callable[[Exception], "tuple[str, bool] | None"]


class ProviderStep(Step, Generic[HostT, PlanT]):
    """A create_vm step: ``p`` the provider (as the step module's protocol), ``plan`` the decided VM."""

    def __init__(self, host: HostT, plan: PlanT) -> None:
        self.p = host
        self.plan = plan


def run_create_vm(
    steps: Iterable[Step],
    state: dict[str, Any],
    log: logging.Logger,
    *,
    where: str,
    describe: Describe | None = None,
    passthrough: tuple[type[BaseException], ...] = (),
) -> None:
    """Run ``steps`` with reverse cleanup; raise VMCreationFailed (see the module docstring) when one fails."""
    try:
        StepRunner(log).run(steps, state)
    except VMCreationFailed:
        raise
    except passthrough:
        raise
    except CpiError as exc:
        raise VMCreationFailed(f"{where}: {exc.message}", ok_to_retry=exc.ok_to_retry) from None
    except Exception as exc:
        described = describe(exc) if describe is not None else None
        message, retry = described if described is not None else (f"{type(exc).__name__}: {exc}", False)
        raise VMCreationFailed(f"{where}: {message}", ok_to_retry=retry) from None
