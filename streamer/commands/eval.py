"""`streamer eval`: flicker, warp error and lag of stylized video; smoothing on vs off vs fresh noise."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from streamer.config import add_pipeline_args, parse_size, pipeline_config_from_args, say
from streamer.engine.outputs import add_overwrite_argument, check_output, write_file, write_text

EPILOG = """examples:
  streamer eval --preset analytic --json eval.json --plot eval.png
      run a model on generated clips (still, moving, cut) with smoothing on, off and fresh noise
      (analytic: a deterministic model with no download; without --preset: the default model)
  streamer eval --preset analytic --check
      the same, exit status 1 when a smoothing target is missed (for CI)
  streamer eval --preset analytic my_clip.mp4
      the same on your own clip
  streamer eval input.mp4 stylized.mp4 --reference unsmoothed.mp4
      measure a stylized output you already have (no model)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("input", nargs="?", type=Path, default=None,
                        help="input clip; without it, generated clips are used")
    parser.add_argument("output", nargs="?", type=Path, default=None,
                        help="the stylized output of INPUT; given, nothing is run, the two files are measured")
    parser.add_argument("--reference", type=Path, default=None,
                        help="with INPUT OUTPUT: another output of INPUT (e.g. unsmoothed) to compare against")
    parser.add_argument("--clips", default="still,moving,cut",
                        help="generated clips to run, comma separated: still, moving, cut (default all)")
    parser.add_argument("--frames", type=int, default=24, help="frames per generated clip (default 24)")
    parser.add_argument("--clip-size", type=parse_size, default=(256, 192), metavar="WxH",
                        help="size of the generated clips (default 256x192)")
    parser.add_argument("--size", type=parse_size, dest="clip_size", help=argparse.SUPPRESS)  # old name
    parser.add_argument("--json", type=Path, default=None, help="write the full report (per frame too) here")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG of the per-frame curves here")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 when a smoothing target is missed (generated clips only)")
    add_overwrite_argument(parser)
    add_pipeline_args(parser)


def _finite(value: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _measure_files(args: argparse.Namespace) -> dict[str, Any]:
    from streamer.eval.clips import read_clip
    from streamer.eval.run import evaluate_files

    inputs, _ = read_clip(args.input)
    outputs, _ = read_clip(args.output)
    reference = read_clip(args.reference)[0] if args.reference is not None else None
    if reference is not None and len(reference) < min(len(inputs), len(outputs)):
        raise ValueError(f"--reference {args.reference} has {len(reference)} frames, fewer than the clips")
    return evaluate_files(inputs, outputs, reference)


def _run_model(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines import load_pipeline
    from streamer.eval.clips import CLIP_NAMES, Clip, make_clip, read_clip
    from streamer.eval.run import evaluate_pipeline

    if args.frames < 4:
        raise ValueError(f"--frames must be at least 4, got {args.frames}")
    config = pipeline_config_from_args(args)
    if args.input is not None:
        frames, fps = read_clip(args.input)
        clips = [Clip(args.input.stem, frames, fps, description=str(args.input))]
    else:
        names = [n.strip() for n in args.clips.split(",") if n.strip()]
        unknown = [n for n in names if n not in CLIP_NAMES]
        if unknown or not names:
            raise ValueError(f"--clips takes names from {', '.join(CLIP_NAMES)}, got {args.clips!r}")
        width, height = args.clip_size
        clips = [make_clip(n, args.frames, width, height) for n in names]
    pipe = load_pipeline(config, on_progress=say)
    return evaluate_pipeline(pipe, clips, config.smoothing.model_dump())


def run(args: argparse.Namespace) -> int:
    from streamer.eval.run import missed_targets, summary_lines

    if args.check and args.input is not None:
        raise ValueError("--check compares against targets set for the generated clips; leave out INPUT to use them")
    # The output paths first: a wrong one is refused before anything is read or run.
    inputs = [args.input, args.output, args.reference]
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            check_output(path, inputs=inputs, overwrite=args.overwrite, what=flag)
    if args.output is not None:
        report = _measure_files(args)
    else:
        if args.reference is not None:
            raise ValueError("--reference needs INPUT and OUTPUT files")
        report = _run_model(args)
    for line in summary_lines(report):
        print(line)
    if args.json is not None:
        write_text(args.json, json.dumps(_finite(report), indent=1), overwrite=args.overwrite)
        print(f"wrote {args.json}")
    if args.plot is not None:
        from streamer.eval.plot import plot_report

        write_file(args.plot, lambda temporary: plot_report(report, temporary), overwrite=args.overwrite)
        print(f"wrote {args.plot}")
    if args.check:
        missed = missed_targets(report)
        if missed:
            print(f"streamer: eval --check: {len(missed)} of {len(report['targets'])} targets missed: "
                  + "; ".join(missed), file=sys.stderr)
            return 1
        print(f"check: all {len(report['targets'])} targets met")
    return 0
