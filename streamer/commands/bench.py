"""`streamer bench`: the frame step against diffusers' reference pipeline, same components, one process."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from streamer.config import parse_size
from streamer.engine.outputs import add_overwrite_argument, check_output, write_text

ARCHS = ["tiny", "sd15", "tiny-sdxl", "sdxl"]


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"values must be >= 1, got {text!r}")
    return values


def _counts(text: str) -> list[int]:
    values = _ints(text)
    if any(v > 4 for v in values):
        raise argparse.ArgumentTypeError(f"at most 4 ControlNets, got {text!r}")
    return values


def _choices(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",")]
        bad = [v for v in values if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (comma-separated), got {bad[0]!r}")
        return list(dict.fromkeys(values))
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Random-weight components with the real architecture (no download): SD 1.5 size by "
                     "default, tiny with --quick. Prints a table; --json writes rows with name, batch, steps, "
                     "ms_per_frame, fps, ratio_vs_diffusers.")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    parser.add_argument("--quick", action="store_true",
                        help="tiny components at 64x64: a few seconds on a CPU, checks the harness, not speed")
    parser.add_argument("--arch", choices=ARCHS, default=None,
                        help="model architecture (default sd15; sdxl is SDXL base's 2.6 B UNet, tiny-sdxl checks "
                             "that path in seconds)")
    parser.add_argument("--size", choices=ARCHS, dest="arch", help=argparse.SUPPRESS)  # the old name of --arch
    parser.add_argument("--resolution", type=parse_size, default=None, metavar="WxH",
                        help="size the model works at, square: 512 or 512x512 (default 512; 1024 for sdxl; 64 "
                             "for the tiny architectures)")
    parser.add_argument("--batch", type=_ints, default=None, help="batch sizes of the frame step, e.g. 1,4,8,16")
    parser.add_argument("--steps", type=_ints, default=[1, 2], help="denoising steps to time (default 1,2)")
    parser.add_argument("--vae", choices=["taesd", "full", "both"], default="both",
                        help="VAE of the frame step's rows (diffusers is timed with both either way)")
    parser.add_argument("--strength", type=float, default=0.5, help="0-1: how far from the input (default 0.5)")
    parser.add_argument("--iterations", type=int, default=None, metavar="N",
                        help="timed calls per row, median reported (default 20; 5 with --quick); a warning "
                             "says when they varied too much to trust")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="also time the compiled frame step (default auto: on CUDA only); batch sizes "
                             "compile one at a time, in the order --batch gives them")
    parser.add_argument("--fuse-qkv", choices=["auto", "on", "off"], default="auto",
                        help="fused attention projections in the frame step's UNet (default auto: on CUDA)")
    parser.add_argument("--controlnet-rows", type=_counts, default=None, metavar="N[,N...]", dest="controlnets",
                        help="also time the frame step with N random ControlNets (e.g. 1,2) against diffusers' "
                             "ControlNet img2img pipeline, and the control images' cost (canny, depth estimator)")
    parser.add_argument("--style-image", default=None, metavar="PATH",
                        help="also time a style image through a (random) IP-Adapter, against diffusers' pipeline "
                             "with ip_adapter_image")
    parser.add_argument("--style-scale", type=float, default=0.6, metavar="X",
                        help="IP-Adapter scale of those rows, 0-2 (default 0.6)")
    parser.add_argument("--channels-last", choices=["auto", "on", "off", "unet", "vae"], default="auto",
                        help="channels-last layout for the frame step's UNet and VAE, or one of them (default "
                             "auto: both on CUDA)")
    parser.add_argument("--graph", type=_choices(("auto", "whole", "seams", "off")), default=["auto"],
                        metavar="MODES", help="what the compiled rows compile, one set of rows per mode, e.g. "
                        "whole,seams: whole = the whole step in one CUDA graph per batch size and step count, "
                        "seams = the three model calls, off = no CUDA graphs; auto (default) = whole on CUDA, "
                        "seams elsewhere")
    parser.add_argument("--smoothing", type=_choices(("off", "on")), default=["off"], metavar="on,off",
                        help="frame-step rows with temporal smoothing off, on (a moving picture), or both")
    parser.add_argument("--attention", choices=["auto", "flash", "cudnn", "efficient", "math"], default="auto",
                        help="force this attention kernel in the frame step (default auto: torch's choice)")
    parser.add_argument("--no-eager", action="store_true", help="leave out the eager frame-step rows")
    parser.add_argument("--json", type=Path, default=None,
                        help="write the results as JSON to this file (rewritten after each row)")
    add_overwrite_argument(parser)
    # Accepted so a preset-driven invocation reports a bad preset name or setting in one line.
    parser.add_argument("--preset", default=None, help="check this preset's settings first (nothing is loaded)")


def run(args: argparse.Namespace) -> int:
    if args.json is not None:  # before anything loads
        check_output(args.json, overwrite=args.overwrite, what="--json")
    from pipelines.loading import resolve_device

    resolve_device(args.device)  # a bad --device fails now, not after diffusers and the models have loaded
    from pipelines.bench import run_bench, spread_warning

    if args.preset:
        from pipelines.presets import build_config

        build_config(args.preset, {"device": args.device})
    style = None
    if args.style_image is not None:
        from pipelines.conditioning.style_image import read_style_file
        from pipelines.config import LiveParams

        style = read_style_file(args.style_image, "--style-image")
        if not 0 <= args.style_scale <= 2:
            raise ValueError(f"--style-scale must be a number from 0 to 2, got {args.style_scale:g}")
        LiveParams.parse({"style_scale": args.style_scale})
    if args.iterations is not None and args.iterations < 1:
        raise ValueError(f"--iterations must be at least 1, got {args.iterations}")
    size = args.arch or ("tiny" if args.quick else "sd15")
    width, height = args.resolution or (({"sd15": 512, "sdxl": 1024}.get(size, 64),) * 2)
    if width != height:
        raise ValueError(f"--resolution: bench times square frames; give {width} or {width}x{width}")
    resolution = width
    if resolution % 8:
        raise ValueError(f"--resolution must be a multiple of 8, got {resolution}")
    result = run_bench(
        size=size, device_name=args.device, dtype_name=args.dtype, resolution=resolution,
        batches=args.batch or [1], steps_list=args.steps,
        vaes=["taesd", "full"] if args.vae == "both" else [args.vae], strength=args.strength,
        warmup=1 if args.quick else 3, iterations=args.iterations or (5 if args.quick else 20),
        compile_setting=args.compile, fuse_qkv=args.fuse_qkv, channels_last=args.channels_last,
        controlnets=args.controlnets, graphs=args.graph, smoothing=[v == "on" for v in args.smoothing],
        attention=args.attention, eager=not args.no_eager,
        log=lambda line: print(line, file=sys.stderr, flush=True),
        checkpoint=None if args.json is None else lambda result: write_json(result, args.json),
        style_image=style, style_scale=args.style_scale,
    )
    print_table(result)
    if args.json is not None:
        write_json(result, args.json)
    warning = spread_warning(result)
    if warning:
        print(f"streamer: warning: {warning}", file=sys.stderr)
    return 0


def write_json(result: dict, path: Path) -> None:
    """The results so far, whole or not at all (a run killed mid-write keeps the previous rows). The path
    was checked before the run (an existing file only with --overwrite), so each row replaces the last."""
    write_text(path, json.dumps(result, indent=2) + "\n", overwrite=True)


def print_table(result: dict, stream: TextIO = sys.stdout) -> None:
    m = result["machine"]
    print(f"# {result['model_size']} components, {result['resolution']}x{result['resolution']}, "
          f"{result['dtype']}, on {m['device']} ({m['cpu_count']} CPUs), torch {m['torch']}", file=stream)
    print(f"{'name':<48} {'vae':<6} {'batch':>5} {'steps':>5} {'ms/frame':>10} {'fps':>8} {'vs diffusers':>12} "
          f"{'UNet TFLOP/s':>12} {'peak MB':>8}", file=stream)
    for r in result["rows"]:
        ratio = "" if r["ratio_vs_diffusers"] is None else f"{r['ratio_vs_diffusers']:.2f}x"
        tflops = "" if r.get("unet_tflops") is None else f"{r['unet_tflops']:.3g}"
        peak = "" if r.get("peak_memory_mb") is None else f"{r['peak_memory_mb']:.0f}"
        print(f"{r['name']:<48} {r['vae']:<6} {r['batch']:>5} {r['steps']:>5} {r['ms_per_frame']:>10.2f} "
              f"{r['fps']:>8.2f} {ratio:>12} {tflops:>12} {peak:>8}".rstrip(), file=stream)
