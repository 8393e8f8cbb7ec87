"""A preset name or a PipelineConfig -> a pipeline ready to take frames."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.frames import FramePipeline
from pipelines.presets import build_config


def load_pipeline(config: PipelineConfig | str | None = None, *,
                  on_progress: Callable[[str], None] | None = None, **overrides: Any) -> FramePipeline:
    """A preset name (None: the default preset) or a config, with PipelineConfig fields in ``overrides`` on
    top -> a pipeline ready to take frames. ``on_progress`` hears what a long start is doing (compiling);
    without it that goes to the log (pipelines print nothing)."""
    if config is None or isinstance(config, str):
        config = build_config(config, overrides)
    elif overrides:
        config = config.model_copy(update=overrides)
    if config.family == "passthrough":
        from pipelines.passthrough import PassthroughPipeline

        return PassthroughPipeline()
    from pipelines.lcm_img2img import StreamPipeline

    return StreamPipeline.from_config(config, on_progress=on_progress)
