"""Pipeline settings: what a preset YAML holds, what the CLI overrides, what changes live."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

from annotated_types import Ge, Gt, Le, Lt, MaxLen
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

Family = Literal["lcm", "lcm-lora", "turbo", "tiny", "random-sd15", "analytic", "passthrough"]

MAX_PROMPT_CHARS = 2000
_SMOOTHING_VALUES = "on/off, true/false or a mapping of smoothing settings"


def _not_bool(value: Any) -> Any:
    # pydantic reads true as 1: a switch given where a number belongs is a mistake, not a number.
    if isinstance(value, bool):
        raise ValueError("a number is needed, not true/false")
    return value


_NotBool = BeforeValidator(_not_bool)


def _style_image(value: Any) -> Any:
    from pipelines.conditioning.style_image import parse_style_value

    return parse_style_value(value)
Number = Annotated[float, _NotBool]
Whole = Annotated[int, _NotBool]

# The ranges of the parameters that change live, shared by a config (PipelineConfig) and a live change
# (LiveParams): one definition, so both accept and refuse the same values.
Prompt = Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_PROMPT_CHARS)]
Strength = Annotated[float, _NotBool, Field(gt=0.0, le=1.0)]
Steps = Annotated[int, _NotBool, Field(ge=1, le=8)]
Guidance = Annotated[float, _NotBool, Field(ge=0.0, le=50.0)]
Seed = Annotated[int, _NotBool, Field(ge=0, le=2**63 - 1)]
StyleScale = Annotated[float, _NotBool, Field(ge=0.0, le=2.0)]


class SmoothingConfig(BaseModel):
    """Latent temporal smoothing, per stream. ``enabled=False`` leaves only the fixed per-stream noise."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = True
    input_blend: Number = Field(0.6, ge=0.0, lt=1.0, description="weight of the previous input latent where still")
    output_blend: Number = Field(0.5, ge=0.0, lt=1.0, description="weight of the previous output latent where still")
    motion_threshold: Number = Field(0.03, gt=0.0, description="pooled input change (0-1) counted as full motion")
    skip_similarity: Number = Field(0.995, gt=0.0, le=1.0, description="input similarity above which the model is skipped")
    max_skip: Whole = Field(3, ge=0, description="most frames in a row re-emitted without running the model")
    motion_compensation: bool = Field(False, description="warp the previous latents by optical flow before blending")
    scene_cut_threshold: Number = Field(0.12, gt=0.0, description="mean input change (0-1) treated as a cut: state reset")


ControlType = Literal["canny", "depth", "previous", "input"]
CONTROL_TYPES: tuple[str, ...] = get_args(ControlType)
ControlScale = Annotated[float, _NotBool, Field(ge=0.0, le=2.0)]
CannyThreshold = Annotated[float, _NotBool, Field(ge=0.0, le=1000.0)]


class ControlNetConfig(BaseModel):
    """One ControlNet: its model, the control image it is given, and how strongly it steers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model_id: str = Field(..., min_length=1, description="ControlNet hub id or local folder")
    type: ControlType = Field("canny", description="control image: canny, depth, previous (last output), input")
    scale: ControlScale = Field(1.0, description="conditioning scale, 0-2")


class ControlSettings(BaseModel):
    """The ControlNet settings a stream changes live; ``scale`` and ``type`` hold one value per net."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = True
    scale: list[ControlScale] = Field(default_factory=list)
    type: list[ControlType] = Field(default_factory=list)
    canny_low: CannyThreshold = Field(100.0, description="canny: gradients below this are never edges (0-255 scale)")
    canny_high: CannyThreshold = Field(200.0, description="canny: gradients above this are always edges")
class IPAdapterConfig(BaseModel):
    """An IP-Adapter (style image) as diffusers' ``load_ip_adapter`` finds it: weights in diffusers' layout
    and a CLIP image encoder, in a hub repository or a local folder (h94/IP-Adapter's layout)."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(description="hub id or local folder holding the adapter, e.g. h94/IP-Adapter")
    subfolder: str = Field("models", description="folder of the weights inside it (h94: models, sdxl_models)")
    weight_name: str = Field("ip-adapter_sd15.safetensors", description="the weights file")
    image_encoder_folder: str = Field(
        "image_encoder", description="the CLIP image encoder: a name is inside subfolder, a path with / is from "
        "the top (diffusers' rule), e.g. models/image_encoder for the SDXL ViT-H adapters")

    def image_encoder_subfolder(self) -> str:
        if "/" in self.image_encoder_folder:
            return self.image_encoder_folder.strip("/")
        return f"{self.subfolder.strip('/')}/{self.image_encoder_folder}".strip("/")

    def weights_path(self) -> str:
        return f"{self.subfolder.strip('/')}/{self.weight_name}".strip("/")


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    family: Family = "lcm"
    model_id: str | None = Field(None, description="hub id or local folder of the diffusers model")
    lora_id: str | None = Field(None, description="LCM-LoRA hub id or folder, fused at load time")
    vae_id: str | None = Field(None, description="tiny autoencoder (TAESD) hub id or folder; None = the model's VAE")
    sdxl: bool = False
    width: int = Field(512, ge=8)
    height: int = Field(512, ge=8)
    prompt: Prompt = "an oil painting, vivid colours, thick brush strokes"
    negative_prompt: Prompt = ""
    strength: Strength = 0.5
    num_inference_steps: Steps = 1
    guidance_scale: Guidance = 1.0
    original_inference_steps: int = Field(50, ge=1, description="LCM's skipping schedule length")
    seed: Seed = 0
    device: str = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    prompt_blend_frames: int = Field(4, ge=1, description="frames over which a new prompt fades in")
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the model calls (CUDA graphs on CUDA); auto = on CUDA only")
    fuse_qkv: Literal["auto", "on", "off"] = Field(
        "auto", description="fuse the UNet's attention projections into one matmul; auto = on CUDA only")
    channels_last: Literal["auto", "on", "off", "unet", "vae"] = Field(
        "auto", description="UNet and VAE in channels-last memory layout (faster convolutions on tensor cores); "
        "unet or vae: that module only; auto = both on CUDA only")
    graph: Literal["auto", "whole", "seams", "off"] = Field(
        "auto", description="what compiling covers: whole = the whole frame step, one CUDA graph per batch size "
        "and step count; seams = the three model calls, one graph each; off = the model calls without CUDA "
        "graphs; auto = whole on CUDA, seams elsewhere")
    attention: Literal["auto", "flash", "cudnn", "efficient", "math"] = Field(
        "auto", description="force this scaled-dot-product attention kernel (torch.nn.attention.sdpa_kernel); "
        "auto = torch's choice")
    compile_batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 4], min_length=1,
        description="batch sizes compiled at start-up; a batch is padded up to the next one, larger ones run eagerly")
    compile_cache_dir: str | None = Field(
        None, description="folder that keeps compiled code between starts (TORCHINDUCTOR_CACHE_DIR, when set, "
        "wins); None = torch's default, a temporary folder")
    smoothing: SmoothingConfig = Field(default_factory=SmoothingConfig)
    controlnets: list[ControlNetConfig] = Field(default_factory=list, max_length=4,
                                                description="ControlNets applied to every stream (at most 4)")
    controlnet_enabled: bool = Field(True, description="streams start with the ControlNets on")
    canny_low: CannyThreshold = 100.0
    canny_high: CannyThreshold = 200.0
    depth_model_id: str = Field("depth-anything/Depth-Anything-V2-Small-hf",
                                description="transformers depth estimator for 'depth' control images")
    depth_resolution: int = Field(518, ge=14, le=2048, description="side the depth estimator sees (multiple of 14)")
    ip_adapter: IPAdapterConfig | None = Field(None, description="an IP-Adapter, for a style image")
    style_image: str | None = Field(None, description="picture file whose style every stream starts with "
                                    "(needs ip_adapter)")
    style_scale: StyleScale = 0.6

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        for name in ("width", "height"):
            if getattr(self, name) % 8:
                raise ValueError(f"{name} must be a multiple of 8, got {getattr(self, name)}")
        if self.family in ("lcm", "lcm-lora", "turbo") and not self.model_id:
            raise ValueError(f"family {self.family!r} needs model_id (a hub id or a local folder)")
        if self.family == "lcm-lora" and not self.lora_id:
            raise ValueError("family 'lcm-lora' needs lora_id (e.g. latent-consistency/lcm-lora-sdv1-5)")
        if self.controlnets and self.family not in ("lcm", "lcm-lora", "turbo", "tiny"):
            raise ValueError(f"family {self.family!r} takes no ControlNet; use lcm, lcm-lora or turbo")
        if self.canny_low > self.canny_high:
            raise ValueError(f"canny_low ({self.canny_low:g}) must not be above canny_high ({self.canny_high:g})")
        if self.depth_resolution % 14:
            raise ValueError(f"depth_resolution must be a multiple of 14, got {self.depth_resolution}")
        if self.ip_adapter is not None and self.family not in ("lcm", "lcm-lora", "turbo", "tiny"):
            raise ValueError(f"family {self.family!r} takes no IP-Adapter; use an lcm, lcm-lora or turbo model")
        if self.style_image:
            if self.ip_adapter is None:
                raise ValueError("a style image needs an IP-Adapter: use a preset with one (e.g. "
                                 "sd15-ip-adapter) or set ip_adapter")
            from pipelines.conditioning.style_image import read_style_file

            read_style_file(self.style_image, "style_image")
        return self

    def control_settings(self) -> ControlSettings:
        """A new stream's ControlNet settings."""
        return ControlSettings(enabled=self.controlnet_enabled, scale=[c.scale for c in self.controlnets],
                               type=[c.type for c in self.controlnets], canny_low=self.canny_low,
                               canny_high=self.canny_high)


class LiveParams(BaseModel):
    """A change of the parameters a stream may change while it runs; only the fields given change.

    Every surface (control port, terminal, the server's data channel and /params, ``update`` of every
    pipeline) reads a change through ``LiveParams.parse``: the whole change is checked before any of it is
    applied, with the ranges of PipelineConfig. ``smoothing`` is on/off (a bool or "on", "off", "true",
    "false") or a mapping of SmoothingConfig settings; it is kept as the mapping of the settings given.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    prompt: Prompt | None = None
    negative_prompt: Prompt | None = None
    strength: Strength | None = None
    num_inference_steps: Steps | None = None
    guidance_scale: Guidance | None = None
    seed: Seed | None = None
    smoothing: dict[str, Any] | None = None
    controlnet: dict[str, Any] | None = None
    # A picture (base64 or a data: URL; "" clears it), kept as a checked StyleImage; never a path.
    style_image: Annotated[Any, BeforeValidator(_style_image)] = None
    style_scale: StyleScale | None = None

    @classmethod
    def parse(cls, data: Any) -> LiveParams:
        """A mapping of changes (or a LiveParams) -> LiveParams; ValueError of one line names what is wrong."""
        if isinstance(data, LiveParams):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"parameters must be a JSON object, got {type(data).__name__}")
        for name, value in data.items():
            # "not given" is leaving it out, not null; a style image alone may be null: no style
            if value is None and name in cls.model_fields and name != "style_image":
                raise ValueError(f"{name} must be {_describe_live(name)}, got null")
        data = dict(data)
        if "style_image" in data:  # a picture: its own checks and words (pipelines/conditioning/style_image.py)
            data["style_image"] = _style_image(data["style_image"])
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(explain(exc, PipelineConfig, unknown="parameter", choices=tuple(cls.model_fields))
                             ) from None

    def changes(self) -> dict[str, Any]:
        """The fields given, in their declared order: keyword arguments for ``update``."""
        return {name: getattr(self, name) for name in type(self).model_fields if name in self.model_fields_set}

    @field_validator("smoothing", mode="before")
    @classmethod
    def _smoothing(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return {"enabled": value}
        if isinstance(value, str) and value.strip().lower() in ("on", "off", "true", "false"):
            return {"enabled": value.strip().lower() in ("on", "true")}
        if isinstance(value, Mapping):
            try:  # the defaults are valid and no setting depends on another: each given value is checked
                checked = SmoothingConfig.model_validate({**SmoothingConfig().model_dump(), **value})
            except ValidationError as exc:
                raise ValueError(explain(exc, SmoothingConfig, prefix="smoothing.", unknown="smoothing setting")
                                 ) from None
            return {name: getattr(checked, name) for name in value}
        raise ValueError(f"smoothing must be {_SMOOTHING_VALUES}, got {_shown(value)}")

    @field_validator("controlnet", mode="before")
    @classmethod
    def _controlnet(cls, value: Any) -> Any:
        from pipelines.conditioning.settings import parse_control_change

        return parse_control_change(value)


def _number(x: float) -> str:
    if isinstance(x, int) and x > 2**32 and (x + 1) & x == 0:
        return f"2**{(x + 1).bit_length() - 1}-1"
    return f"{x:g}" if isinstance(x, float) else str(x)


def describe(field: FieldInfo) -> str | None:
    """What a field accepts, in words ("a number above 0 and at most 1"); None if there is no simple way."""
    lower = upper = None
    most = None
    for item in field.metadata:
        if isinstance(item, Gt):
            lower = f"above {_number(item.gt)}"
        elif isinstance(item, Ge):
            lower = f"at least {_number(item.ge)}"
        elif isinstance(item, Lt):
            upper = f"below {_number(item.lt)}"
        elif isinstance(item, Le):
            upper = f"at most {_number(item.le)}"
        elif isinstance(item, MaxLen):
            most = item.max_length
        elif isinstance(item, StringConstraints) and item.max_length is not None:
            most = item.max_length
    annotation = field.annotation
    if type(None) in get_args(annotation) and len(get_args(annotation)) == 2:  # optional: what it is when given
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if annotation is str:
        return "text" if most is None else f"text of at most {most} characters"
    if annotation not in (int, float):
        return None
    kind = "a whole number" if annotation is int else "a number"
    metadata = {type(item) for item in field.metadata}
    if Ge in metadata and Le in metadata:
        return f"{kind} from {lower.removeprefix('at least ')} to {upper.removeprefix('at most ')}"
    return " ".join(part for part in (kind, " and ".join(p for p in (lower, upper) if p)) if part)


def _describe_live(name: str) -> str:
    field = PipelineConfig.model_fields.get(name)
    if name == "controlnet":
        from pipelines.conditioning.settings import CONTROL_VALUES

        return CONTROL_VALUES
    return (describe(field) if field is not None else None) or _SMOOTHING_VALUES


def _shown(value: Any) -> str:
    """A value as the user gave it, short: long text by its length, huge numbers by their digits."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"a {len(str(abs(value))) if value.bit_length() < 10_000 else 'many'}-digit number"
    if isinstance(value, str) and len(value) > 60:
        return f"{len(value)} characters of text"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def explain(exc: ValidationError, model: type[BaseModel], *, prefix: str = "", unknown: str = "setting",
            choices: tuple[str, ...] | None = None, labels: Mapping[str, str] | None = None) -> str:
    """The first error of a validation, in one line of the user's terms: which value, what it must be.

    ``labels`` names settings the way the caller's user knows them, e.g. {'num_inference_steps': '--steps'}.
    """
    err = exc.errors(include_url=False)[0]
    loc = [str(part) for part in err["loc"]]
    name = prefix + ".".join(loc)
    name = (labels or {}).get(name, name)
    owner: type[BaseModel] | None = model
    field: FieldInfo | None = None
    for part in loc:  # walk into nested settings (smoothing.input_blend)
        field = owner.model_fields.get(part) if owner is not None else None
        if field is None:
            break
        owner = field.annotation if isinstance(field.annotation, type) and issubclass(
            field.annotation, BaseModel) else None
    if err["type"] == "extra_forbidden":
        names = choices if choices is not None and len(loc) == 1 else (
            tuple(owner.model_fields) if owner is not None else ())
        close = difflib.get_close_matches(loc[-1], names, n=1) if loc else []
        known = f"; did you mean {close[0]}?" if close else (f"; choose from: {', '.join(names)}" if names else "")
        return f"unknown {unknown} {name!r}{known}"
    message = str(err["msg"]).removeprefix("Value error, ")
    what = describe(field) if field is not None and loc else None
    if what is None:  # a check's own sentence (model checks, smoothing) or an error of a plain field
        return message if not loc or err["type"] == "value_error" else f"{name}: {message}"
    return f"{name} must be {what}, got {_shown(err.get('input'))}"
