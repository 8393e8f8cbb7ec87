"""`streamer batch --ray`: the batch's workers as Ray actors, on a local cluster or one joined by address.

One actor per GPU (``num_gpus=1``; or per unit of a custom resource, or ``--workers`` CPU actors) holds a
loaded pipeline (FileWorker) and takes whole files: decoding and encoding happen inside it, so no frame
goes through Ray's object store, only file names and records. An actor that dies (killed, out of memory,
its node lost) is restarted by Ray at most ``retries`` times; the file it held fails over to the first
worker free (run_batch counts the retries), and the partial file the dead process left is removed once
the file is done. Ray is an optional extra: ``pip install "streamer[ray]"``.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from streamer.scale.batch import FileSettings, FileWorker, WorkerDied
from streamer.scale.plan import BatchFile

CONNECT_SECONDS = 5.0
INSTALL_HINT = 'pip install "streamer[ray]" (or pip install "ray>=2.40")'


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError(f"--ray needs Ray, which the default install leaves out: {INSTALL_HINT}") from None
    return ray


def check_address(address: str) -> None:
    """Refuse in one line a HOST:PORT where no Ray head answers (Ray itself would retry for minutes).
    "local", "auto" and ray:// client addresses are left to Ray."""
    if address in ("local", "auto") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray {address}: give local, auto or HOST:PORT of a Ray head (ray start --head "
                         "prints it; the port is 6379 by default)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"cannot reach the Ray cluster at {address} ({reason.lower()}); start one with "
                         "`ray start --head` or check the address") from None


def connect(address: str, verbose: bool = False) -> Any:
    """``ray.init`` for both commands: "local" starts a cluster here (dashboard off), "auto" or HOST:PORT
    joins a running one. Returns the ``ray`` module; ValueError (one line) when that fails."""
    ray = import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=verbose, logging_level=logging.WARNING)
        else:
            ray.init(address=address, log_to_driver=verbose, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot join the Ray cluster at {address}: {first}") from None
    return ray


class RayPool:
    """FileWorker actors on a Ray cluster: ``address`` "local" starts one here (dashboard off), "auto" or
    HOST:PORT joins a running one (``ray start --head``)."""

    def __init__(self, settings: FileSettings, *, address: str, workers: int | None, worker_cpus: float,
                 worker_resource: str | None, retries: int, verbose: bool = False) -> None:
        ray = self.ray = connect(address, verbose)
        try:
            self._start_actors(settings, workers, worker_cpus, worker_resource, retries)
        except BaseException:
            ray.shutdown()
            raise

    def _start_actors(self, settings: FileSettings, workers: int | None, worker_cpus: float,
                      worker_resource: str | None, retries: int) -> None:
        ray, config = self.ray, settings.config
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        options: dict[str, Any] = {"num_cpus": worker_cpus, "max_restarts": retries, "max_task_retries": 0,
                                   "max_concurrency": 2}  # run() in one thread, progress()/stop() beside it
        wants_gpu = config.family != "passthrough" and config.device != "cpu"
        if worker_resource:
            available = int(resources.get(worker_resource, 0))
            if not available:
                raise ValueError(f"--worker-resource {worker_resource}: the Ray cluster has no such resource "
                                 f"(it has: {', '.join(sorted(k for k in resources if ':' not in k))})")
            options["resources"] = {worker_resource: 1}
        elif wants_gpu and gpus:
            available = gpus
            options["num_gpus"] = 1
            if config.device.startswith("cuda:"):  # inside an actor its one GPU is cuda:0
                settings = FileSettings(**{**settings.__dict__, "config": config.model_copy(update={"device": "cuda"})})
        elif config.device.startswith("cuda"):
            raise ValueError(f"--device {config.device}, but the Ray cluster has no GPU; use --device cpu or auto")
        else:
            available = 1
        count = workers or available
        actor_class = ray.remote(FileWorker).options(**options)
        self.actors = [actor_class.remote(settings, f"worker-{i + 1}") for i in range(count)]
        self.names = [f"worker-{i + 1}" for i in range(count)]
        self.retries = retries
        self.deaths = [0] * count
        self.pid_refs = [actor.pid.remote() for actor in self.actors]
        self.last_progress: dict[int, int] = {}
        self.partials: dict[str, list[int]] = {}

    def submit(self, worker: int, item: BatchFile) -> Any:
        self.last_progress[worker] = 0
        return self.actors[worker].run.remote(item)

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        return ready

    def result(self, handle: Any) -> dict[str, Any]:
        errors = self.ray.exceptions
        died = tuple(getattr(errors, name) for name in ("RayActorError", "WorkerCrashedError", "NodeDiedError",
                                                        "OwnerDiedError") if hasattr(errors, name))
        try:
            return self.ray.get(handle)
        except died as exc:
            text = str(exc).strip()
            if "creation task" in text:  # its __init__ raised: loading the model failed, on every try
                reason = text.splitlines()[-1].split(": ", 1)[-1]
                raise ValueError(f"a Ray worker could not load the model: {reason}") from None
            raise WorkerDied(f"a worker died ({type(exc).__name__})") from None
        except errors.RayTaskError as exc:  # run() reports errors itself: this is something else
            return {"status": "failed", "error": str(exc).strip().splitlines()[-1]}

    def progress(self, workers: list[int]) -> dict[int, int]:
        refs = {worker: self.actors[worker].progress.remote() for worker in workers}
        ready, _ = self.ray.wait(list(refs.values()), num_returns=len(refs), timeout=0.2)
        for worker, ref in refs.items():
            if ref in ready:
                try:
                    self.last_progress[worker] = self.ray.get(ref)
                except Exception:  # a worker dying now: its result says so
                    pass
        return {worker: self.last_progress.get(worker, 0) for worker in workers}

    def ready(self, worker: int) -> bool:
        """Started (or restarted) and answering: a file is not sent to an actor still loading its model, so a
        file whose actor died goes to another one when that one is free first."""
        if self.gone(worker):
            return False
        ready, _ = self.ray.wait([self.pid_refs[worker]], num_returns=1, timeout=0)
        return bool(ready)

    def gone(self, worker: int) -> bool:
        return self.deaths[worker] > self.retries  # Ray restarts it at most ``retries`` times

    def died(self, worker: int, item: BatchFile) -> None:
        self.deaths[worker] += 1
        try:
            pid = self.ray.get(self.pid_refs[worker], timeout=0)
        except Exception:  # it died before it ever answered
            pid = None
        if pid is not None:
            self.partials.setdefault(item.output, []).append(pid)
        self.pid_refs[worker] = self.actors[worker].pid.remote()  # answered by the restarted process

    def finished(self, item: BatchFile) -> None:
        """Remove what the dead processes that held ``item`` left (a kill -9 leaves its partial file)."""
        output = Path(item.output)
        for pid in self.partials.pop(item.output, []):
            for leftover in output.parent.glob(f".{output.stem}.partial-{pid}*{output.suffix}"):
                try:
                    leftover.unlink()
                except OSError:
                    pass

    def stop(self) -> None:
        for actor in self.actors:
            actor.stop.remote()

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:
                pass
        self.ray.shutdown()
