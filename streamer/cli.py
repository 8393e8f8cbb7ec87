"""`streamer`: one command, a subcommand per job. Errors a user can fix are one line, exit 2."""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys
from typing import NoReturn

from streamer import __version__

COMMANDS = {
    "file": "stylize a video file into a new file (every frame, audio kept)",
    "batch": "stylize many video files (folders, globs, lists) on local workers or a Ray cluster",
    "run": "stylize a live source (webcam, RTSP, file, testsrc) into sinks (virtual camera, preview, file, network)",
    "serve": "WebRTC server: a browser page, WHIP/WHEP for OBS, many sessions on one GPU",
    "eval": "measure flicker, warp error and lag of a stylized clip; compare smoothing on and off",
    "bench": "time the frame step against diffusers' reference pipeline",
}


class Parser(argparse.ArgumentParser):
    """An argument error is one line, the error first: no usage block in front of it, a pointer to the
    command's --help, and the nearest flag when one was mistyped."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(2, f"streamer: error: {message} (see `{self.prog} --help`)\n")

    def visible_options(self) -> list[str]:
        return [option for action in self._actions if action.help != argparse.SUPPRESS
                for option in action.option_strings if option.startswith("--")]

    def unrecognized(self, extras: list[str], top: Parser) -> NoReturn:
        message = f"unrecognized arguments: {' '.join(extras)}"
        for extra in extras:
            if extra.startswith("-"):
                close = difflib.get_close_matches(extra.split("=", 1)[0], self.visible_options()
                                                  + (top.visible_options() if top is not self else []), n=1)
                if close:
                    message += f"; did you mean {close[0]}?"
                    break
        self.error(message)


def build_parser() -> Parser:
    parser = Parser(
        prog="streamer",
        description="Real-time video stylizer: 1-2 step LCM img2img with latent temporal smoothing.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"streamer.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    from pipelines.errors import PipelineError
    from streamer.sinks.base import SinkError
    from streamer.sources.base import SourceError

    # OSError covers what the system refuses (a folder given as a file, a full disk, a port in use).
    return (PipelineError, SourceError, SinkError, ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Flags the subcommand does not know come back here: reported against the subcommand, not the top level.
    args, extras = parser.parse_known_args(argv)
    if extras:
        getattr(args, "_parser", parser).unrecognized(extras, parser)
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
