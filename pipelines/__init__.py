"""Everything about the model: frames in, stylized frames out. Never imports ``streamer``."""

from pipelines.errors import PipelineError
from pipelines.frames import FramePipeline

__all__ = ["FramePipeline", "PipelineError", "StreamPipeline", "load_pipeline"]


def __getattr__(name: str):
    # torch and diffusers load on first use, so `streamer --help` and the I/O paths start fast.
    if name == "StreamPipeline":
        from pipelines.lcm_img2img import StreamPipeline

        return StreamPipeline
    if name == "load_pipeline":
        from pipelines.factory import load_pipeline

        return load_pipeline
    raise AttributeError(name)
