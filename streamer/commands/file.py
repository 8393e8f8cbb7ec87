"""`streamer file IN OUT`: stylize every frame of a video file; timing and audio are kept."""

from __future__ import annotations

import argparse
import sys

from pipelines.config import PipelineConfig
from streamer.config import add_pipeline_args, parse_size, pipeline_config_from_args, say
from streamer.engine.outputs import add_overwrite_argument, check_output, local_path
from streamer.engine.stop_signals import EXIT_STATUS_HELP, StopOnSignals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Stylize every frame of a video file into a new file. Frames keep their "
                          "timestamps (variable frame rate survives) and audio is copied unchanged. "
                          "OUT gets its name only when complete (it is written as .OUT.partial-PID next "
                          "to it); an existing OUT is replaced only with --overwrite. Ctrl-C, SIGTERM or "
                          "SIGHUP stops early and leaves a playable file.")
    parser.epilog = EXIT_STATUS_HELP
    parser.add_argument("input", metavar="IN", help="video file to read (anything FFmpeg reads)")
    parser.add_argument("output", metavar="OUT", help="file to write; the extension picks the container "
                        "(.mp4, .mkv, .mov, .ts, .webm) and, unless --codec, the encoder")
    out = parser.add_argument_group("output")
    add_overwrite_argument(out)
    add_encoding_args(out)
    add_pipeline_args(parser)


def add_encoding_args(group: argparse._ArgumentGroup) -> None:
    """The settings of a file job besides IN and OUT (size, encoder, batch, progress): `file` and `batch`."""
    group.add_argument("--size", type=parse_size, default=None, metavar="WxH",
                       help="scale the output to this size, as shown (a portrait phone clip is taller than "
                            "wide); odd numbers round down to even (default: the input's shown size)")
    group.add_argument("--codec", default=None,
                       help="video encoder (default by OUT's container: libvpx-vp9 for .webm, else libx264; "
                            "also libx265, libsvtav1)")
    group.add_argument("--crf", type=int, default=23,
                       help="constant quality, lower is better and bigger (default 23; libx264 range 0-51)")
    group.add_argument("--encoder-preset", default=None, metavar="NAME",
                       help="encoder speed preset: x264/x265 ultrafast...placebo (default veryfast; medium or "
                            "slow give smaller files, slower), libsvtav1 a number")
    group.add_argument("--batch", type=int, default=4,
                       help="frames per model call (default 4; on a GPU 8-16 is faster); larger uses more GPU "
                            "memory, and on CUDA the step is compiled for this size")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bar with fps and ETA on stderr (default: when stderr is a terminal)")


def check_encoding_args(args: argparse.Namespace, output: str) -> str:
    """Refuse bad encoding settings (one line) before the model loads; return the encoder for ``output``."""
    from streamer.sinks.encoders import check_encoder_preset, video_codec, video_codec_for

    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    if not 0 <= args.crf <= 63:
        raise ValueError(f"--crf must be between 0 and 63 (libx264: 0-51), got {args.crf}")
    codec = args.codec or video_codec_for(output)
    video_codec(codec)  # an unknown encoder or a bad preset is refused before the model loads
    if args.encoder_preset is not None:
        check_encoder_preset(codec, args.encoder_preset)
    return codec


def file_pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    """The model settings of a file job: every model call holds --batch frames (the last one padded up to
    it), the one size worth compiling."""
    return pipeline_config_from_args(args).model_copy(update={"compile_batch_sizes": [args.batch]})


def run(args: argparse.Namespace) -> int:
    import threading

    from pipelines import load_pipeline
    from streamer.engine.file_job import stylize_file

    # The paths first: a wrong one is refused before the model loads.
    check_output(args.output, inputs=[local_path(args.input, what="input")], overwrite=args.overwrite)
    codec = check_encoding_args(args, args.output)
    pipeline = load_pipeline(file_pipeline_config(args), on_progress=say)
    stop = threading.Event()
    with StopOnSignals(stop.set, "finishing the frames in flight, closing the file") as signals:
        summary = stylize_file(
            args.input, args.output, pipeline, batch=args.batch, size=args.size, codec=codec,
            crf=args.crf, progress=sys.stderr.isatty() if args.progress is None else args.progress,
            stop=stop, overwrite=args.overwrite,
            encoder_options={"preset": args.encoder_preset} if args.encoder_preset else None,
        )
    problem = summary.problem()
    if problem:
        print(f"streamer: warning: {problem}", file=sys.stderr)
    print(summary.report(), file=sys.stderr)
    return signals.exit_status() if summary.interrupted else 0  # a signal after the last frame changes nothing
