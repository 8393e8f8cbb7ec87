"""CLI options shared by every command that runs a model, turned into a PipelineConfig."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.presets import DEFAULT_PRESET, build_config, preset_names, read_yaml

# Where compiled model code is kept between starts (pipelines choose no folder of their own).
COMPILE_CACHE_DIR = Path.home() / ".cache" / "streamer" / "inductor"


def say(message: str) -> None:
    """What a pipeline reports while it starts (compiling), printed as one of the CLI's own lines."""
    print(f"streamer: {message}", file=sys.stderr, flush=True)


def parse_size(text: str) -> tuple[int, int]:
    """'640x360' -> (640, 360); '512' -> (512, 512)."""
    parts = text.lower().split("x")
    try:
        w, h = (int(v) for v in (parts * 2 if len(parts) == 1 else parts))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x360 (or 512 for 512x512), got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


# Settings a flag sets, named as the user typed them in messages (a bad --steps says --steps).
FLAGS = {"prompt": "--prompt", "negative_prompt": "--negative-prompt", "strength": "--strength",
         "num_inference_steps": "--steps", "guidance_scale": "--guidance", "seed": "--seed", "device": "--device",
         "dtype": "--dtype", "width": "--resolution width", "height": "--resolution height"}


def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--preset", default=None, metavar="NAME",
                   help=f"model preset (default {DEFAULT_PRESET}); one of: {', '.join(preset_names())}")
    g.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="YAML file of settings; its 'pipeline' section (or the whole file) overrides the preset, "
                        "and flags given here override the file (a --preset flag wins over its 'preset:')")
    g.add_argument("--prompt", default=None, metavar="TEXT", help="what the video should look like")
    g.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="what it should not (families that use it)")
    g.add_argument("--strength", type=float, default=None, metavar="X",
                   help="how far from the input, more than 0 and at most 1 (default 0.5)")
    g.add_argument("--steps", type=int, default=None, dest="num_inference_steps", metavar="N",
                   help="denoising steps per frame, 1-8 (default: the preset's, 1 or 2); 1-2 keep live video "
                        "real time, each further step costs about as much again")
    g.add_argument("--guidance", type=float, default=None, dest="guidance_scale", metavar="SCALE",
                   help="guidance scale, 0 or more (default: the preset's)")
    g.add_argument("--seed", type=int, default=None, metavar="N", help="noise seed; fixed per stream")
    g.add_argument("--resolution", type=parse_size, default=None, metavar="WxH",
                   help="size the model works at (multiples of 8); output keeps the input size")
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu or auto (default)")
    g.add_argument("--dtype", default=None, choices=["auto", "float16", "bfloat16", "float32"])
    g.add_argument("--smoothing", choices=["on", "off"], default=None,
                   help="latent temporal smoothing (default on); off = fixed noise only")
    g.add_argument("--compile", choices=["auto", "on", "off"], default=None,
                   help="torch.compile + CUDA graphs for the model calls (default auto: on CUDA only; "
                        "the first start compiles for a minute or more, later starts use the cache)")


def pipeline_config_from_args(args: argparse.Namespace, section: str = "pipeline") -> PipelineConfig:
    """The preset, then the --config file's settings, then the flags: the later wins. Checked before anything
    loads, in the flags' own terms (a bad --device fails here, not after the model has loaded)."""
    overrides: dict[str, Any] = {}
    preset = getattr(args, "preset", None)
    labels: dict[str, str] = {}
    if getattr(args, "config", None) is not None:
        data = read_yaml(args.config)
        data = data.get(section, data) if section in data else data
        data = {k: v for k, v in data.items() if k not in ("source", "sources", "sink", "sinks", "run", "server")}
        file_preset = data.pop("preset", None)
        preset = preset or file_preset
        overrides.update(data)
    for key in ("prompt", "negative_prompt", "strength", "num_inference_steps", "guidance_scale", "seed",
                "device", "dtype"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
            labels[key] = FLAGS[key]
    if getattr(args, "resolution", None) is not None:
        width, height = args.resolution
        if width % 8 or height % 8:
            raise ValueError(f"--resolution must be multiples of 8 (e.g. 512x288), got {width}x{height}")
        overrides["width"], overrides["height"] = width, height
        labels.update(width=FLAGS["width"], height=FLAGS["height"])
    if getattr(args, "compile", None) is not None:
        overrides["compile"] = args.compile
    if getattr(args, "smoothing", None) is not None:
        overrides["smoothing"] = {"enabled": args.smoothing == "on"}
    config = build_config(preset, overrides, labels)
    if config.compile_cache_dir is None:
        config = config.model_copy(update={"compile_cache_dir": str(COMPILE_CACHE_DIR)})
    if config.device != "auto" and config.family != "passthrough":
        from pipelines.loading import resolve_device

        resolve_device(config.device)
    return config
