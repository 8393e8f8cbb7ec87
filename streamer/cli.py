"""`streamer`: one command, a subcommand per job. Errors a user can fix are one line, exit 2."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "file": "stylize a video file into a new file (every frame, audio kept)",
    "run": "stylize a live source (webcam, RTSP, file, testsrc) into sinks (virtual camera, preview, file, network)",
    "serve": "WebRTC server: a browser page, WHIP/WHEP for OBS, many sessions on one GPU",
    "eval": "measure flicker, warp error and lag of a stylized clip; compare smoothing on and off",
    "bench": "time the frame step against diffusers' reference pipeline",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamer",
        description="Real-time video stylizer: 1-2 step LCM img2img with latent temporal smoothing.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"streamer.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    from pipelines.errors import PipelineError
    from streamer.sinks.base import SinkError
    from streamer.sources.base import SourceError

    # OSError covers what the system refuses (a folder given as a file, a full disk, a port in use).
    return (PipelineError, SourceError, SinkError, ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("streamer: interrupted", file=sys.stderr)
        return 130
    except user_errors() as exc:
        if args.verbose:
            raise
        print(f"streamer: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
