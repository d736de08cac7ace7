"""``region-fanout``: the same post-processor as ``fanout`` under the name that says what it is for."""

from __future__ import annotations

from typing import ClassVar

from builders.postprocessors.fanout import FanoutPostProcessor


class RegionFanoutPostProcessor(FanoutPostProcessor):
    type_name: ClassVar[str] = "region-fanout"


PLUGIN = RegionFanoutPostProcessor
