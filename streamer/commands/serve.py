"""`streamer serve`: a WebRTC server. A browser page for your camera, WHIP in / WHEP out for OBS, a relayed
server-side source at /watch, Prometheus metrics; every session shares one GPU worker."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from streamer.config import SetupConfig, add_pipeline_args, pipeline_config_from_args, say
from streamer.server.auth import add_access_arguments, token_from_args

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig
    from streamer.server.app import ServerOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Open http://HOST:PORT/ in a browser (add ?token=T with a token: the page keeps it in a "
                     "cookie). OBS: publish with WHIP to http://HOST:PORT/whip (Bearer token = T), play the "
                     "result with WHEP from /whep or add /watch as a Browser Source. Reached by a name other "
                     "than HOST or localhost: add --allow-host NAME.")
    g = parser.add_argument_group("server")
    g.add_argument("--host", default=None,
                   help="address to listen on (default 127.0.0.1; another address needs --token or --insecure)")
    g.add_argument("--port", type=int, default=None, help="TCP port (default 8080; 0 = any free port)")
    add_access_arguments(g, "signalling, controls and /metrics")
    g.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without --token")
    g.add_argument("--max-sessions", type=int, default=None, metavar="N",
                   help="most stylized streams at once (browser + WHIP); more get 503 (default 4)")
    g.add_argument("--max-viewers", type=int, default=None, metavar="N", help="most WHEP / /watch viewers at once (default 32)")
    g.add_argument("--idle-timeout", type=float, default=None, metavar="SECONDS",
                   help="close a session whose peer sent no frame (a viewer: answered no ICE consent "
                        "check) for this many seconds (default 10)")
    g.add_argument("--connect-timeout", type=float, default=None, metavar="SECONDS",
                   help="close a session whose peer has not connected this many seconds after its offer, "
                        "freeing its slot (default 15)")
    g.add_argument("--max-batch", type=int, default=None, metavar="N", help="most frames in one model call (default 8)")
    g.add_argument("--submit-ahead", action="store_true",
                   help="queue the next batch on the GPU before taking the previous one's result (at most one "
                        "batch in flight): transfers overlap compute, for a little latency while frames wait")
    g.add_argument("--cert", type=Path, default=None, help="TLS certificate (PEM) for HTTPS")
    g.add_argument("--key", type=Path, default=None, help="TLS private key (PEM) for HTTPS")
    g.add_argument("--source", default=None,
                   help="a server-side source (rtsp://..., a file, testsrc) stylized once and shown at /watch")
    g.add_argument("--ice-server", action="append", default=None, metavar="URL",
                   help="STUN/TURN server, repeatable (stun:host:3478, turn:host:3478); default none")
    g.add_argument("--ice-username", default=None, metavar="NAME", help="username for the TURN servers")
    g.add_argument("--ice-credential", default=None, metavar="PASSWORD", help="password for the TURN servers")
    g.add_argument("--ice-address", action="append", default=None, metavar="ADDR",
                   help="offer ICE host candidates only on this address, repeatable (e.g. 127.0.0.1 for "
                        "peers on this machine: loopback is otherwise left out)")
    ray = parser.add_argument_group("scaling out (Ray Serve)")
    ray.add_argument("--ray", default=None, metavar="ADDRESS",
                     help="serve on Ray: 'local' starts a cluster on this machine, 'auto' or HOST:PORT joins a "
                          "running one (ray start --head); sessions are spread over replicas, each with its own "
                          "model; needs pip install \"streamer[ray]\"")
    ray.add_argument("--replicas", type=int, default=None, metavar="N",
                     help="with --ray: this many replicas (default 1), each taking up to --max-sessions")
    ray.add_argument("--min-replicas", type=int, default=None, metavar="N",
                     help="with --ray: autoscale on session count, from this many replicas...")
    ray.add_argument("--max-replicas", type=int, default=None, metavar="N", help="...up to this many")
    ray.add_argument("--replica-cpus", type=float, default=1.0, metavar="X",
                     help="with --ray: CPUs each replica reserves (default 1; fractions allowed)")
    ray.add_argument("--replica-resource", default=None, metavar="NAME",
                     help="with --ray: each replica takes one unit of this custom Ray resource instead of a GPU")
    add_pipeline_args(parser)


def prepare(args: argparse.Namespace) -> tuple[ServerOptions, PipelineConfig, str | None]:
    """The server's options and the pipeline's config from the flags and --config, checked before anything
    loads; and the server-side source, if any."""
    from streamer.server.app import ServerOptions

    file_setup = SetupConfig.read(args.config)  # the YAML, read once
    server = file_setup.with_flags(args, ("server",)).server
    options = ServerOptions(token=token_from_args(args.token, args.token_file), **server.options())
    options.check()  # before loading a model: a bad flag should fail in a second, not after a download

    from streamer.control.params import initial_params

    config = pipeline_config_from_args(args, file_setup)
    options.defaults = initial_params(config)
    # One model call holds at most a frame per session (and one of the server-side source): compile for it.
    largest = min(options.max_batch, options.max_sessions + (1 if server.source else 0))
    if config.compile != "off" and max(config.compile_batch_sizes) < largest:
        config = config.model_copy(update={"compile_batch_sizes": sorted({*config.compile_batch_sizes, largest})})
    return options, config, server.source


def run(args: argparse.Namespace) -> int:
    ray_flags = [flag for flag, given in (("--replicas", args.replicas), ("--min-replicas", args.min_replicas),
                                          ("--max-replicas", args.max_replicas),
                                          ("--replica-resource", args.replica_resource)) if given is not None]
    if args.ray is None and ray_flags:
        raise ValueError(f"{ray_flags[0]} needs --ray (without it one process serves every session)")
    if args.ray is not None:
        from streamer.scale.serve_ray import import_serve

        import_serve()  # not installed: one line, before anything else happens
    options, config, server_source = prepare(args)
    if args.ray is not None:
        from streamer.scale.serve_ray import check_ray_options, run_on_ray, scaling_from_args

        check_ray_options(options, server_source)
        return run_on_ray(options, config, scaling_from_args(args), args.ray, verbose=args.verbose)

    from pipelines import load_pipeline
    from streamer.server.app import run_server

    pipeline = load_pipeline(config, on_progress=say)
    source = None
    if server_source:
        from streamer.sources import open_source

        # A file plays at its own rate, over and over: /watch is a live show, not a transcode.
        source = open_source(server_source, realtime=True, loop=True, stream_id="source")
        source.open()
    try:
        return run_server(options, pipeline, source)
    finally:
        if source is not None:
            source.close()
