"""CLI options shared by every command that runs a model, turned into a PipelineConfig."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.presets import DEFAULT_PRESET, build_config, preset_names, read_yaml


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


def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--preset", default=None,
                   help=f"model preset (default {DEFAULT_PRESET}); one of: {', '.join(preset_names())}")
    g.add_argument("--config", type=Path, default=None,
                   help="YAML file of settings; its 'pipeline' section (or the whole file) overrides the preset")
    g.add_argument("--prompt", default=None, help="what the video should look like")
    g.add_argument("--negative-prompt", default=None, help="what it should not (families that use it)")
    g.add_argument("--strength", type=float, default=None, help="0-1: how far from the input (default 0.5)")
    g.add_argument("--steps", type=int, default=None, dest="num_inference_steps",
                   help="denoising steps per frame, 1 or 2")
    g.add_argument("--guidance", type=float, default=None, dest="guidance_scale", help="guidance scale")
    g.add_argument("--seed", type=int, default=None, help="noise seed; fixed per stream")
    g.add_argument("--resolution", type=parse_size, default=None, metavar="WxH",
                   help="size the model works at (multiple of 8); output keeps the input size")
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu or auto (default)")
    g.add_argument("--dtype", default=None, choices=["auto", "float16", "bfloat16", "float32"])
    g.add_argument("--smoothing", choices=["on", "off"], default=None,
                   help="latent temporal smoothing (default on); off = fixed noise only")
    g.add_argument("--compile", choices=["auto", "on", "off"], default=None,
                   help="torch.compile + CUDA graphs for the model calls (default auto: on CUDA only; "
                        "the first start compiles for a minute or more, later starts use the cache)")


def pipeline_config_from_args(args: argparse.Namespace, section: str = "pipeline") -> PipelineConfig:
    overrides: dict[str, Any] = {}
    preset = args.preset
    if getattr(args, "config", None) is not None:
        data = read_yaml(args.config)
        data = data.get(section, data) if section in data else data
        data = {k: v for k, v in data.items() if k not in ("source", "sources", "sink", "sinks", "run", "server")}
        preset = preset or data.pop("preset", None)
        overrides.update(data)
    for key in ("prompt", "negative_prompt", "strength", "num_inference_steps", "guidance_scale", "seed",
                "device", "dtype"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "resolution", None) is not None:
        overrides["width"], overrides["height"] = args.resolution
    if getattr(args, "compile", None) is not None:
        overrides["compile"] = args.compile
    if getattr(args, "smoothing", None) is not None:
        overrides["smoothing"] = {"enabled": args.smoothing == "on"}
    return build_config(preset, overrides)
