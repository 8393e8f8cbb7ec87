"""Setups: a --config YAML file read once into pydantic sections (source, sinks, run, pipeline), with the
command's flags on top; and the CLI options shared by every command that runs a model, turned into a
PipelineConfig. A section's defaults are written once, in its model; a flag left out is None (not given)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.config import CONTROL_TYPES, PipelineConfig, explain
from pipelines.presets import DEFAULT_PRESET, build_config, preset_names, read_yaml

# Where compiled model code is kept between starts (pipelines choose no folder of their own).
COMPILE_CACHE_DIR = Path.home() / ".cache" / "streamer" / "inductor"


def say(message: str) -> None:
    """What a pipeline reports while it starts (compiling), printed as one of the CLI's own lines."""
    print(f"streamer: {message}", file=sys.stderr, flush=True)


class SourceSection(BaseModel):
    """``source:`` of a setup: a spec such as ``testsrc`` or a mapping of these."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    spec: str | None = None
    width: int | None = Field(None, gt=0)
    height: int | None = Field(None, gt=0)
    fps: float | None = Field(None, gt=0)
    realtime: bool = False
    loop: bool = False
    transport: Literal["tcp", "udp"] = "tcp"
    timeout: float = Field(5.0, gt=0, description="seconds to wait when connecting to a network source")


class RunSection(BaseModel):
    """``run:`` of a setup."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    duration: float | None = Field(None, gt=0)
    stats: Path | None = None
    control_port: int = Field(0, ge=0, le=65535)
    progress: bool | None = None  # None: when stderr is a terminal
    codec: str | None = None
    crf: int | None = None


class ServerSection(BaseModel):
    """``server:`` of a setup (``streamer serve``): what is given; the defaults are ServerOptions' own."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    host: str | None = None
    port: int | None = None
    insecure: bool = False
    allow_hosts: list[str] | None = None
    max_sessions: int | None = None
    max_viewers: int | None = None
    idle_timeout: float | None = None
    connect_timeout: float | None = None
    max_batch: int | None = None
    submit_ahead: bool = False
    cert: Path | None = None
    key: Path | None = None
    source: str | None = None  # a server-side source shown at /watch
    ice_servers: list[str] | None = None
    ice_username: str | None = None
    ice_credential: str | None = None
    ice_addresses: list[str] | None = None

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ServerOptions: the settings given (the rest keep its defaults)."""
        return self.model_dump(exclude_none=True, exclude={"source"})


# Where a setup's settings come from on the command line: section field -> the flag's dest in argparse.
SOURCE_FLAGS = {"spec": "source", "width": "width", "height": "height", "fps": "fps", "realtime": "realtime",
                "loop": "loop", "transport": "transport", "timeout": "timeout"}
RUN_FLAGS = {name: name for name in RunSection.model_fields}
SERVER_FLAGS = {**{name: name for name in ServerSection.model_fields}, "allow_hosts": "allow_host",
                "ice_servers": "ice_server", "ice_addresses": "ice_address"}
FLAGS_OF = {"source": SOURCE_FLAGS, "run": RUN_FLAGS, "server": SERVER_FLAGS}
SECTIONS = ("source", "sinks", "run", "server", "pipeline")


class SetupConfig(BaseModel):
    """A setup file: ``source``, ``sinks``, ``run`` and ``pipeline`` sections (configs/setups/). A file
    without ``pipeline:`` holds pipeline settings at its top level (``preset: tiny``, ``prompt: ...``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    source: SourceSection = Field(default_factory=SourceSection)
    sinks: list[str] | None = None
    run: RunSection = Field(default_factory=RunSection)
    server: ServerSection = Field(default_factory=ServerSection)
    pipeline: dict[str, Any] = Field(default_factory=dict)  # preset + PipelineConfig fields: pipeline_config()

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        if "sink" in data and "sinks" not in data:
            data["sinks"] = data.pop("sink")
        if "pipeline" not in data:  # pipeline settings at the top level
            data["pipeline"] = {k: data.pop(k) for k in list(data) if k not in SECTIONS}
        for name in ("run", "server", "pipeline"):
            if data.get(name) is None:
                data.pop(name, None)
        return data

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"spec": value}
        if value is not None and not isinstance(value, Mapping):
            raise ValueError("'source' must be a spec such as testsrc or a mapping with 'spec'")
        return value or {}

    @field_validator("sinks", mode="before")
    @classmethod
    def _sinks(cls, value: Any) -> Any:
        value = [value] if isinstance(value, str) else value
        if value is not None and (not isinstance(value, list) or not all(isinstance(s, str) for s in value)):
            raise ValueError("'sinks' must be a list of sink specs such as [out.mp4, virtualcam]")
        return value

    @classmethod
    def read(cls, path: Path | None) -> SetupConfig:
        """The setup in ``path`` (None: an empty setup); one line naming the file when it is wrong."""
        if path is None:
            return cls()
        try:
            return cls.model_validate(read_yaml(path))
        except ValidationError as exc:
            raise ValueError(f"{path}: {explain(exc, cls)}") from None

    def with_flags(self, args: argparse.Namespace, sections: tuple[str, ...] = ("source", "sinks", "run")
                   ) -> SetupConfig:
        """This setup with the flags of ``sections`` given on the command line on top (a flag left out is None,
        False or empty). Checked whole; a bad value is named by its flag when a flag gave it, else by its place
        in the file."""
        merged: dict[str, Any] = {}
        labels: dict[str, str] = {}
        for section in (name for name in sections if name in FLAGS_OF):
            flags = FLAGS_OF[section]
            model = getattr(self, section)
            values = model.model_dump(exclude_unset=True)
            for name, dest in flags.items():
                given = getattr(args, dest, None)
                # A switch that is off (store_true's False) was not given; --no-progress's False was.
                if given is not None and given != [] and not (
                        given is False and type(model).model_fields[name].default is False):
                    values[name] = given
                    labels[f"{section}.{name}"] = "--" + dest.replace("_", "-")
            merged[section] = values
        if "sinks" in sections and getattr(args, "sink", None):
            merged["sinks"] = args.sink
        data = {**self.model_dump(exclude_unset=True), **merged}
        try:
            return SetupConfig.model_validate(data)
        except ValidationError as exc:
            raise ValueError(explain(exc, SetupConfig, labels=labels)) from None


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
         "dtype": "--dtype", "width": "--resolution width", "height": "--resolution height",
         "style_image": "--style-image", "style_scale": "--style-scale"}


def parse_controlnet(text: str) -> dict[str, Any]:
    """``ID[:TYPE[:SCALE]]`` -> a ControlNetConfig mapping; ArgumentTypeError (one line) when malformed."""
    model_id, *rest = text.split(":")
    if not model_id or len(rest) > 2:
        raise argparse.ArgumentTypeError(f"expected ID[:TYPE[:SCALE]], e.g. lllyasviel/control_v11p_sd15_canny:"
                                         f"canny:0.8, got {text!r}")
    spec: dict[str, Any] = {"model_id": model_id}
    if rest:
        if rest[0] not in CONTROL_TYPES:
            raise argparse.ArgumentTypeError(f"control type must be one of {', '.join(CONTROL_TYPES)}, "
                                             f"got {rest[0]!r} in {text!r}")
        spec["type"] = rest[0]
    if len(rest) == 2:
        try:
            scale = float(rest[1])
        except ValueError:
            scale = math.nan
        if not 0 <= scale <= 2:
            raise argparse.ArgumentTypeError(f"scale must be a number from 0 to 2, got {rest[1]!r} in {text!r}")
        spec["scale"] = scale
    return spec


def parse_canny(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH, e.g. 100:200, got {text!r}") from None
    if not (0 <= low <= high <= 1000):
        raise argparse.ArgumentTypeError(f"thresholds must be 0 <= LOW <= HIGH <= 1000, got {text!r}")
    return low, high


def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--preset", default=None, metavar="NAME",
                   help=f"model preset (default {DEFAULT_PRESET}); one of: {', '.join(preset_names())}")
    g.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="YAML setup file (configs/setups/): its 'pipeline' section (or the whole file) overrides "
                        "the preset; 'source', 'sinks', 'run' (streamer run) and 'server' (streamer serve) "
                        "sections hold those flags' settings; flags given here override the file (a --preset "
                        "flag wins over its 'preset:')")
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
    g.add_argument("--controlnet", type=parse_controlnet, action="append", default=None, metavar="ID[:TYPE[:SCALE]]",
                   help="a ControlNet (hub id or folder), its control image (canny, depth, previous: the last "
                        "output, input: the frame; default canny) and scale (0-2, default 1); repeat for several. "
                        "Replaces the preset's ControlNets")
    g.add_argument("--canny", type=parse_canny, default=None, metavar="LOW:HIGH",
                   help="canny thresholds on OpenCV's 0-255 gradient scale (default 100:200)")
    g.add_argument("--depth-model", default=None, dest="depth_model_id", metavar="ID",
                   help="transformers depth estimator for depth control images "
                        "(default depth-anything/Depth-Anything-V2-Small-hf)")
    g.add_argument("--style-image", default=None, metavar="PATH",
                   help="picture whose style every stream takes (IP-Adapter; a preset with one, e.g. "
                        "sd15-ip-adapter); changes live through /params, the terminal and the page")
    g.add_argument("--style-scale", type=float, default=None, metavar="X",
                   help="how strongly the style image counts, 0-2 (default: the preset's, 0.6)")
    g.add_argument("--compile", choices=["auto", "on", "off"], default=None,
                   help="torch.compile + CUDA graphs for the model calls (default auto: on CUDA only; "
                        "the first start compiles for a minute or more, later starts use the cache)")
    g.add_argument("--graph", choices=["auto", "whole", "seams", "off"], default=None,
                   help="what compiling covers: whole = the whole frame step in one CUDA graph per batch size "
                        "and step count (smoothing included); seams = the three model calls, one graph each; "
                        "off = the model calls without CUDA graphs (default auto: whole on CUDA, seams "
                        "elsewhere)")
    g.add_argument("--attention", choices=["auto", "flash", "cudnn", "efficient", "math"], default=None,
                   help="force this attention kernel (torch.nn.attention.sdpa_kernel; default auto: torch's "
                        "choice); one that cannot run on the device is refused at start-up")


def pipeline_config_from_args(args: argparse.Namespace, setup: SetupConfig | None = None) -> PipelineConfig:
    """The preset, then the --config file's pipeline settings, then the flags: the later wins. Checked before
    anything loads, in the flags' own terms (a bad --device fails here, not after the model has loaded).
    ``setup``: the --config file already read (else it is read here)."""
    if setup is None:
        setup = SetupConfig.read(getattr(args, "config", None))
    overrides: dict[str, Any] = dict(setup.pipeline)
    labels: dict[str, str] = {}
    file_preset = overrides.pop("preset", None)
    preset = getattr(args, "preset", None) or file_preset
    if getattr(args, "style_image", None) is not None:  # the file first, in the flag's words
        from pipelines.conditioning.style_image import read_style_file

        read_style_file(args.style_image, "--style-image")
        args.style_image = str(Path(args.style_image).expanduser().resolve())
    for key in ("prompt", "negative_prompt", "strength", "num_inference_steps", "guidance_scale", "seed",
                "device", "dtype", "style_image", "style_scale"):
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
    for name in ("compile", "graph", "attention"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    if getattr(args, "smoothing", None) is not None:
        overrides["smoothing"] = {"enabled": args.smoothing == "on"}
    if getattr(args, "controlnet", None):
        overrides["controlnets"] = args.controlnet
    if getattr(args, "canny", None) is not None:
        overrides["canny_low"], overrides["canny_high"] = args.canny
    if getattr(args, "depth_model_id", None) is not None:
        overrides["depth_model_id"] = args.depth_model_id
        labels["depth_model_id"] = "--depth-model"
    config = build_config(preset, overrides, labels)
    if config.compile_cache_dir is None:
        config = config.model_copy(update={"compile_cache_dir": str(COMPILE_CACHE_DIR)})
    if config.device != "auto" and config.family != "passthrough":
        from pipelines.loading import resolve_device

        resolve_device(config.device)
    return config
