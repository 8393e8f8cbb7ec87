"""`streamer run`: a live source through the model into sinks, until the source ends, --duration, or a signal.

Exit status (the same rule as `streamer file`, see streamer.engine.stop_signals): 0 when the run ends by itself
(the source ended, --duration); 128 + the signal's number after SIGINT (130), SIGTERM (143) or SIGHUP (129):
capture stops, the frame in flight finishes and every sink is closed, so a recorded file plays. A second
Ctrl-C abandons the clean stop with 130. 2 when something cannot be opened or a setting is wrong (one line).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from streamer.config import SetupConfig, add_pipeline_args, parse_size, pipeline_config_from_args, say
from streamer.engine.outputs import add_overwrite_argument, check_output
from streamer.engine.stop_signals import EXIT_STATUS_HELP, StopOnSignals
from streamer.server.auth import add_access_arguments, allowed_host_names, token_from_args

EXAMPLES = """examples:
  streamer run --source webcam:0 --sink virtualcam --prompt "a watercolor painting"
  streamer run --source rtsp://127.0.0.1:8554/cam --sink out.mp4 --sink preview --duration 60
  streamer run --source testsrc --sink out.mp4 --preset passthrough --duration 5 --stats stats.json
  streamer run --config configs/setups/webcam-to-virtualcam.yaml --control-port 8765

--config FILE takes a setup file with 'source:', 'sinks:', 'run:' (duration, stats, control_port) and
'pipeline:' sections (see configs/setups/); flags given on the command line win over it.

Ctrl-C, SIGTERM or SIGHUP stops cleanly: the frame in flight finishes, every sink is closed (a recording
plays). A file sink is written as .NAME.partial-PID next to it and gets its name when closed; an existing
file is replaced only with --overwrite (-y).

live control: type 'prompt a watercolor', 'strength 0.6', 'seed 3' or 'smoothing off' (when stdin is a
terminal or with --control-stdin), or POST JSON (Content-Type: application/json) to
http://127.0.0.1:PORT/params with --control-port (--token, --token-file or $STREAMER_TOKEN to require a token).
"""

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES + "\n" + textwrap.fill(EXIT_STATUS_HELP, 100) + "\n"
    io = parser.add_argument_group("input and output")
    io.add_argument("--source", default=None,
                    help="webcam:0, /dev/video0, rtsp://..., srt://..., udp://..., http://..., a file, pipe:, "
                         "testsrc or testsrc:640x360@30")
    io.add_argument("--sink", action="append", default=None, metavar="SINK",
                    help="repeatable: virtualcam, virtualcam:/dev/video10, preview, out.mp4, udp://..., "
                         "srt://...?mode=listener, rtsp://...")
    io.add_argument("--source-size", type=parse_size, default=None, metavar="WxH",
                    help="ask the source for this size (scaled if it gives another)")
    io.add_argument("--width", type=int, default=None, help=argparse.SUPPRESS)  # old spelling of --source-size
    io.add_argument("--height", type=int, default=None, help=argparse.SUPPRESS)
    io.add_argument("--fps", type=float, default=None, help="ask a camera or testsrc for this frame rate")
    io.add_argument("--realtime", action="store_true",
                    help="play a file at its own rate, as if live (otherwise as fast as possible, no drops)")
    io.add_argument("--loop", action="store_true", help="restart a file at its end")
    io.add_argument("--transport", choices=["tcp", "udp"], default=None, help="RTSP transport (default tcp)")
    io.add_argument("--timeout", type=float, default=None,
                    help="seconds to wait when connecting to a network source (default 5)")
    io.add_argument("--codec", default=None, help="encoder for file and network sinks (default by container: "
                    "libvpx-vp9 for .webm, else libx264)")
    io.add_argument("--crf", type=int, default=None, help="quality for file and network sinks (default 23)")
    add_overwrite_argument(io)
    run = parser.add_argument_group("run")
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    run.add_argument("--stats", type=Path, default=None, metavar="FILE", help="write run statistics as JSON")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="live status line on stderr (default: when stderr is a terminal)")
    run.add_argument("--control-port", type=int, default=None, metavar="N",
                     help="HTTP control on 127.0.0.1:N (GET/POST /params, GET /stats, /metrics); 0 = off")
    add_access_arguments(run, "the control port")
    run.add_argument("--control-stdin", action="store_true",
                     help="read control commands from stdin even when it is not a terminal")
    add_pipeline_args(parser)


def run(args: argparse.Namespace) -> int:
    from streamer.sinks.factory import make_sinks
    from streamer.sources import open_source

    if args.source_size is not None:
        args.width, args.height = args.source_size
    file_setup = SetupConfig.read(args.config)  # the YAML, read once
    setup = file_setup.with_flags(args)
    src, opts = setup.source, setup.run
    if not src.spec:
        raise ValueError("give a --source (webcam:0, rtsp://..., a file, testsrc) or 'source:' in --config")
    spec = src.spec
    control_port = opts.control_port
    token, token_file, allow_hosts = args.token, args.token_file, args.allow_host
    if not control_port and (token is not None or token_file is not None or allow_hosts):
        raise ValueError("--token, --token-file and --allow-host protect the control port; add --control-port N")
    args.control_token = token_from_args(token, token_file) if control_port else None
    args.allow_host = allowed_host_names(allow_hosts or [])
    config = pipeline_config_from_args(args, file_setup)
    if opts.stats:
        check_output(opts.stats, inputs=[spec], overwrite=args.overwrite, what="--stats")

    av_options = {k: v for k, v in (("codec", opts.codec), ("crf", opts.crf)) if v is not None}
    sinks = make_sinks(list(setup.sinks or []), overwrite=args.overwrite, inputs=[spec], **av_options)
    source = open_source(spec, width=src.width, height=src.height, fps=src.fps, realtime=src.realtime,
                         loop=src.loop, transport=src.transport, timeout=src.timeout)
    from pipelines import load_pipeline

    # The model loads before the source opens: a camera or a --realtime file would otherwise run (and count
    # drops) through a load that can take many seconds. Bad specs were refused above, before the load.
    pipeline = load_pipeline(config, on_progress=say)
    source.open()
    _note_sinks_without_audio(source, sinks)
    try:
        return _run_opened(args, source, sinks, config, pipeline, setup)
    finally:
        source.close()


def _run_opened(args: argparse.Namespace, source: Any, sinks: list, config: Any, pipeline: Any,
                setup: SetupConfig) -> int:
    from streamer.control.http import ControlServer
    from streamer.control.params import ParamsController, TerminalControl, initial_params
    from streamer.engine.runtime import Runtime
    from streamer.engine.worker import GpuWorker
    from streamer.observe.stats import RunStats

    stats = RunStats()
    stats_path, control_port = setup.run.stats, setup.run.control_port
    progress = setup.run.progress  # --no-progress (False) wins over the file too
    show_progress = sys.stderr.isatty() if progress is None else progress
    worker = GpuWorker(pipeline, on_batch=stats.batch)
    server = None
    try:
        params = ParamsController(worker, ["default"], initial_params(config))
        if control_port:
            server = ControlServer(params, control_port, stats=stats, token=args.control_token,
                                   allow_hosts=args.allow_host).start()
            print(f"streamer: control on {server.url}/params", file=sys.stderr, flush=True)
        if args.control_stdin or sys.stdin.isatty():
            TerminalControl(params).start()

        def tick(current: RunStats) -> None:
            if show_progress:
                sys.stderr.write("\r\x1b[2K" + current.status_line())
                sys.stderr.flush()

        runtime = Runtime(source, sinks, worker, stats=stats, duration=setup.run.duration, fps=setup.source.fps,
                          on_tick=tick)
        with StopOnSignals(runtime.stop, "finishing the frame in flight, closing sinks") as signals:
            try:
                runtime.run()
            finally:
                if show_progress:
                    sys.stderr.write("\n")
                if stats_path:
                    stats.write_json(stats_path, overwrite=args.overwrite)
        snap = stats.snapshot()
        lat = snap["latency_ms"]
        print(f"streamer: {snap['frames_in']} frames in, {snap['frames_out']} out, {snap['dropped']} dropped, "
              f"latency p50 {lat['p50']} ms p95 {lat['p95']} ms" + (f"; stats in {stats_path}" if stats_path
                                                                      else ""), file=sys.stderr)
        return signals.exit_status()
    finally:
        if server is not None:
            server.close()
        worker.close()


def _note_sinks_without_audio(source: Any, sinks: list) -> None:
    """A source's audio goes to file and network sinks; a virtual camera or window carries none: say how to
    put the sound back in sync elsewhere (OBS's Sync Offset) from the delay the run reports."""
    if source.audio is None or source.audio.format is None:
        return
    silent = [sink.name for sink in sinks if not sink.takes_audio]
    if silent:
        print(f"streamer: note: {', '.join(silent)} carries no audio; the video there runs behind the source's "
              "sound by the 'video delay' the status line, --stats and /metrics report (in OBS: Advanced Audio "
              "Properties, Sync Offset = that delay on the audio source)", file=sys.stderr)
