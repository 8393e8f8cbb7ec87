"""`streamer serve --ray`: many live sessions over a Ray cluster, as a Ray Serve application.

Two deployments: ``ingress`` (streamer.scale.serve_ingress: the page, signalling, the guard, /metrics) behind
Serve's HTTP proxy, and ``replica`` (streamer.scale.serve_replica: one GPU worker and the WebRTC sessions it
serves, per replica). ``--ray local`` starts a cluster here (dashboard off), ``auto`` or HOST:PORT joins one.
For ``serve deploy``, ``app_builder`` builds the same application from a config file's ``args`` (the flags
of `streamer serve`, see configs/serve-ray.yaml). Ray Serve is an optional extra: pip install "streamer[ray]".
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipelines.config import PipelineConfig
from streamer.engine.stop_signals import STOP_SIGNALS
from streamer.server.app import ServerOptions

APP_NAME = "streamer"
REPLICA_DEPLOYMENT = "replica"
SERVE_HINT = 'pip install "streamer[ray]" (or pip install "ray[serve]>=2.40")'
INGRESS_CPUS = 0.1
REQUEST_TIMEOUT = 90.0  # seconds for any request: an offer waits for ICE gathering and perhaps the worker
HEALTH_CHECK_SECONDS = 1.0  # a dead replica is noticed (and replaced) within a few seconds


@dataclass
class Scaling:
    """How many replicas and what each one reserves on the cluster."""

    replicas: int | None = None  # a fixed count; else autoscaling between min and max on session count
    min_replicas: int | None = None
    max_replicas: int | None = None
    replica_cpus: float = 1.0
    replica_resource: str | None = None  # a custom resource per replica instead of a GPU

    def check(self) -> None:
        if self.replicas is not None and (self.min_replicas is not None or self.max_replicas is not None):
            raise ValueError("give --replicas N, or --min-replicas/--max-replicas for autoscaling, not both")
        for flag, value in (("--replicas", self.replicas), ("--max-replicas", self.max_replicas)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
        if self.min_replicas is not None and self.min_replicas < 0:
            raise ValueError(f"--min-replicas must be 0 or more, got {self.min_replicas}")
        if None not in (self.min_replicas, self.max_replicas) and self.min_replicas > self.max_replicas:
            raise ValueError(f"--min-replicas {self.min_replicas} is more than --max-replicas {self.max_replicas}")
        if self.replica_cpus <= 0:
            raise ValueError(f"--replica-cpus must be more than 0, got {self.replica_cpus}")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None


def import_serve() -> Any:
    try:
        from ray import serve
    except ImportError:
        raise ValueError(f"--ray needs Ray Serve, which the default install leaves out: {SERVE_HINT}") from None
    return serve


def build_app(options: ServerOptions, config: PipelineConfig, scaling: Scaling, gpus: int = 0) -> Any:
    """The Serve application (ingress bound to the replica deployment); ``gpus``: the cluster's GPUs."""
    serve = import_serve()
    from ray.serve.config import RequestRouterConfig

    from streamer.scale.serve_ingress import Ingress, IngressSettings
    from streamer.scale.serve_replica import ReplicaSettings, StreamerReplica

    actor: dict[str, Any] = {"num_cpus": scaling.replica_cpus}
    if scaling.replica_resource:
        actor["resources"] = {scaling.replica_resource: 1}
    elif config.family != "passthrough" and config.device != "cpu" and gpus:
        actor["num_gpus"] = 1
        if config.device.startswith("cuda:"):  # inside a replica its one GPU is cuda:0
            config = config.model_copy(update={"device": "cuda"})
    elif config.device.startswith("cuda"):
        raise ValueError(f"--device {config.device}, but the Ray cluster has no GPU; use --device cpu or auto")
    replica_options: dict[str, Any] = {
        "name": REPLICA_DEPLOYMENT, "ray_actor_options": actor,
        "request_router_config": RequestRouterConfig(
            request_router_class="streamer.scale.serve_replica:SessionRouter"),
        "health_check_period_s": HEALTH_CHECK_SECONDS, "health_check_timeout_s": 10.0,
        "graceful_shutdown_timeout_s": 5.0, "max_ongoing_requests": 64,
    }
    if scaling.autoscaling:
        low = scaling.min_replicas if scaling.min_replicas is not None else 1
        high = scaling.max_replicas if scaling.max_replicas is not None else max(low, 1)
        if low > high:
            raise ValueError(f"--min-replicas {low} is more than --max-replicas {high}")
        replica_options["autoscaling_config"] = {
            "min_replicas": low, "max_replicas": high, "initial_replicas": max(low, 1),
            "upscale_delay_s": 5.0, "downscale_delay_s": 60.0,
            "policy": {"policy_function": "streamer.scale.serve_replica:sessions_policy"}}
    else:
        replica_options["num_replicas"] = scaling.replicas or 1
    replica = serve.deployment(StreamerReplica, **replica_options)
    ingress = serve.deployment(Ingress, name="ingress", num_replicas=1, max_ongoing_requests=256,
                               ray_actor_options={"num_cpus": INGRESS_CPUS})
    return ingress.bind(replica.bind(ReplicaSettings(options, config)), IngressSettings(options, REPLICA_DEPLOYMENT))


def scaling_from_args(args: argparse.Namespace) -> Scaling:
    scaling = Scaling(replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                      replica_cpus=args.replica_cpus, replica_resource=args.replica_resource)
    scaling.check()
    return scaling


def check_ray_options(options: ServerOptions, source: str | None) -> None:
    """What `streamer serve --ray` does not do, refused in one line before anything starts."""
    if source:
        raise ValueError("--source is not supported with --ray (each replica serves its own sessions); publish "
                         "the source with WHIP instead")
    if options.cert is not None:
        raise ValueError("--cert/--key are not supported with --ray; put a TLS proxy in front of Serve's port")


def app_builder(args: Mapping[str, Any]) -> Any:
    """`serve deploy`'s import path (configs/serve-ray.yaml): ``args`` are `streamer serve`'s flags without
    their dashes (``preset: tiny``, ``replicas: 2``, ``allow_host: [studio.local]``); the token comes from
    ``token_file`` or $STREAMER_TOKEN, never from the config file itself."""
    from streamer.cli import build_parser
    from streamer.commands.serve import prepare

    if "token" in args:
        raise ValueError("put the token in a file (token_file: PATH) or $STREAMER_TOKEN, not in the config file")
    argv = ["serve"]
    for key, value in args.items():
        flag = "--" + str(key).replace("_", "-")
        values = value if isinstance(value, list) else [value]
        for item in values:
            if item is True:
                argv.append(flag)
            elif item is not False and item is not None:
                argv += [flag, str(item)]
    parsed, extras = build_parser().parse_known_args(argv)
    if extras:
        raise ValueError(f"unknown args in the Serve config: {' '.join(extras)}")
    options, config, source = prepare(parsed)
    check_ray_options(options, source)
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0
    return build_app(options, config, scaling_from_args(parsed), gpus)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host if host not in ("", "0.0.0.0", "::") else "", 0))
        return sock.getsockname()[1]


def missing_resources(resources: Mapping[str, float], config: PipelineConfig, scaling: Scaling) -> str | None:
    """Why the cluster cannot hold the (fixed or minimum) replicas, or None. Serve would wait for them
    silently, for ever."""
    count = scaling.replicas or (max(1, scaling.min_replicas or 0) if scaling.autoscaling else 1)
    cpus = resources.get("CPU", 0)
    needed = count * scaling.replica_cpus + INGRESS_CPUS
    if needed > cpus + 1e-9:
        return (f"{count} replica(s) of --replica-cpus {scaling.replica_cpus:g} and the ingress need {needed:g} CPUs; "
                f"the Ray cluster has {cpus:g} (lower --replica-cpus or --replicas)")
    if scaling.replica_resource:
        have = resources.get(scaling.replica_resource, 0)
        if have < count:
            return (f"{count} replica(s) need {count} of --replica-resource {scaling.replica_resource}; the Ray "
                    f"cluster has {have:g}")
    elif config.family != "passthrough" and config.device != "cpu" and resources.get("GPU", 0):
        if resources["GPU"] < count:
            return f"{count} replica(s) need a GPU each; the Ray cluster has {resources['GPU']:g}"
    return None


def start_failure(serve: Any, exc: Exception) -> str:
    """One line: why the application did not start (a replica's constructor error, e.g. its model)."""
    try:
        deployment = serve.status().applications[APP_NAME].deployments[REPLICA_DEPLOYMENT]
        lines = [line.strip() for line in (deployment.message or "").splitlines() if line.strip()]
    except Exception:  # the status itself unavailable: Serve's own message
        lines = []
    lines = lines or [line.strip() for line in str(exc).splitlines() if line.strip()] or [repr(exc)]
    return lines[-1].split(": ", 1)[-1] if lines[-1].startswith(("ray.", "pipelines.")) else lines[-1]


def run_on_ray(options: ServerOptions, config: PipelineConfig, scaling: Scaling, address: str,
               verbose: bool = False) -> int:
    """Start (or join) the cluster, run the application, serve until SIGINT/SIGTERM/SIGHUP, then remove it."""
    from streamer.scale.ray_pool import check_address, connect

    import_serve()
    check_address(address)
    ray = connect(address, verbose)
    from ray import serve

    if not verbose:  # Serve's progress lines ("Started Serve", "Deploying...") only with -v
        logging.getLogger("ray.serve").setLevel(logging.WARNING)

    try:
        port = options.port or free_port(options.host)
        resources = ray.cluster_resources()
        short = missing_resources(resources, config, scaling)
        if short and address == "local":
            raise ValueError(short)
        if short:
            print(f"streamer: warning: {short}; the replicas wait until nodes join", file=sys.stderr, flush=True)
        try:
            # Serve's proxy bounds every request end to end (the ingress bounds a body's arrival itself).
            serve.start(http_options={"host": options.host, "port": port, "request_timeout_s": REQUEST_TIMEOUT})
            app = build_app(options, config, scaling, int(resources.get("GPU", 0)))
            serve.run(app, name=APP_NAME, route_prefix="/")
        except RuntimeError as exc:  # a replica that cannot start (its model failed to load, ...)
            raise ValueError(f"the Serve application did not start: {start_failure(serve, exc)}") from None
        host = f"[{options.host}]" if ":" in options.host else options.host
        count = (f"{scaling.min_replicas or 1}-{scaling.max_replicas or 1} replicas (autoscaling)"
                 if scaling.autoscaling else f"{scaling.replicas or 1} replicas")
        print(f"streamer: serving on http://{host}:{port}/ with {count} on Ray (viewer: /watch, WHIP: /whip, "
              "WHEP: /whep, metrics: /metrics)", file=sys.stderr, flush=True)
        stop = threading.Event()
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
        print("streamer: shutting down", file=sys.stderr, flush=True)
        serve.delete(APP_NAME)
        if address == "local":
            serve.shutdown()
        return 0
    finally:
        ray.shutdown()
