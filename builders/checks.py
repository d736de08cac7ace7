"""``stemforge doctor``'s checks for image builds: ``debootstrap``, which the ``debian`` builder runs to make its
cached root tree (warnings only).

The framework and its contracts (bounded, no network, nothing changed) are :mod:`stemforge_base.checks`.
"""

from __future__ import annotations

from stemforge_base.checks import IMAGES, Check, CheckFn, Context, check_binary


def check_debootstrap(ctx: Context) -> list[Check]:
    """``debootstrap`` on the search path, with its version."""
    opts = ctx.options
    return [check_binary("debootstrap", package="debootstrap", required_for=IMAGES, path=opts.path,
                         timeout=opts.timeout)]


def checks() -> tuple[CheckFn, ...]:
    """This package's checks, in report order."""
    return (check_debootstrap,)
