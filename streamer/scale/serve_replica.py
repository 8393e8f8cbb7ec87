"""`streamer serve --ray`'s replica: one GPU worker and one SessionManager per Ray Serve replica, owning the
RTCPeerConnections of its sessions (media flows between the peer and this process; only signalling and
parameter changes come through Serve). Also the router that sends a session's later requests to the replica
that holds it, and the autoscaling policy on session count.

Every method takes ``replica``: the replica it is meant for (SessionRouter pins the call there; None: any).
A call that reaches another replica (the one named has died and Serve routed it elsewhere) answers 404.
Answers are plain dicts; a refusal is ``{"status": N, "error": "one line"}`` (the statuses of
streamer.server.app.ERROR_STATUS), which the ingress turns into HTTP.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from ray.serve.request_router import FIFOMixin, RequestRouter

from pipelines.config import PipelineConfig
from streamer.server.app import ServerOptions, error_answer

log = logging.getLogger(__name__)

SEPARATOR = "."  # session ids the ingress hands out: REPLICA.SESSION (token_urlsafe has no dots)
KNOWN_REPLICAS: dict[str, list[str]] = {}  # deployment name -> running replica ids, as the router last saw


def public_id(replica: str, session_id: str) -> str:
    return f"{replica}{SEPARATOR}{session_id}"


def split_id(public: str) -> tuple[str, str] | None:
    replica, dot, session_id = public.partition(SEPARATOR)
    return (replica, session_id) if dot and replica and session_id else None


@dataclass
class ReplicaSettings:
    options: ServerOptions  # the server's settings; a replica uses the session limits, ICE and defaults
    config: PipelineConfig


class StreamerReplica:
    """The replica deployment's class (made a Serve deployment by streamer.scale.serve_ray.build_app)."""

    def __init__(self, settings: ReplicaSettings) -> None:
        from ray import serve

        from pipelines import load_pipeline
        from streamer.engine.worker import GpuWorker
        from streamer.observe.stats import RunStats
        from streamer.server.sessions import SessionManager, ice_configuration, restrict_host_candidates

        options = self.options = settings.options
        self.replica = serve.get_replica_context().replica_id.unique_id
        if options.ice_addresses:
            restrict_host_candidates(options.ice_addresses)
        self.metrics = RunStats()
        self.worker = GpuWorker(load_pipeline(settings.config), max_batch=options.max_batch,
                                on_batch=self.metrics.batch)
        ice = ice_configuration(options.ice_servers, options.ice_username, options.ice_credential)
        self.manager = SessionManager(self.worker, self.metrics, ice=ice, max_sessions=options.max_sessions,
                                      max_viewers=options.max_viewers, idle_timeout=options.idle_timeout,
                                      connect_timeout=options.connect_timeout, defaults=options.defaults)
        self.started = False

    def _mine(self, replica: str | None) -> None:
        if not self.started:  # the watchdog needs the replica's event loop: started on the first call
            self.manager.start()
            self.started = True

    async def _answer(self, replica: str | None, work: Any) -> dict[str, Any]:
        self._mine(replica)
        if replica is not None and replica != self.replica:  # routed here because that replica is gone
            return {"status": 404, "error": "no such session (the replica that held it has ended)", "gone": True}
        try:
            return await work()
        except Exception as exc:
            answer = error_answer(exc)
            if answer is None:
                raise
            return {"status": answer[0], "error": answer[1].strip().splitlines()[0]}

    # ---- what the ingress asks ---------------------------------------------------------------------
    async def describe(self, replica: str | None = None) -> dict[str, Any]:
        self._mine(None)
        manager = self.manager
        now = time.monotonic()
        return {"replica": self.replica, "pid": os.getpid(), "sessions": sum(s.stylizes for s in manager.sessions.values()),
                "capacity": manager.max_sessions, "counts": manager.counts(),
                "broadcasts": {key: now - b.started for key, b in manager.broadcasts.items()}}

    async def open(self, kind: str, sdp: Any, params: Any = None, stream: str | None = None,
                   replica: str | None = None) -> dict[str, Any]:
        """A new session of ``kind`` (browser, whip, whep): its id and the answer SDP, with this replica's
        ICE candidates."""
        async def work() -> dict[str, Any]:
            if kind == "whep":
                session, answer = await self.manager.open_viewer(sdp, stream)
            else:
                session, answer = await self.manager.open_stylizing(sdp, kind=kind, params=params)
            return {"status": 200, "replica": self.replica, "session_id": session.id, "sdp": answer}
        return await self._answer(replica, work)

    async def close(self, session_id: str, kinds: tuple[str, ...] | None = None,
                    replica: str | None = None) -> dict[str, Any]:
        async def work() -> dict[str, Any]:
            await self.manager.close(self.manager.get(session_id, kinds=kinds).id)
            return {"status": 200}
        return await self._answer(replica, work)

    async def change(self, session_id: str, changes: Any, replica: str | None = None) -> dict[str, Any]:
        """A live parameter change: ParamsController's answer, as `streamer serve` gives it."""
        async def work() -> dict[str, Any]:
            status, body = await self.manager.change_params(session_id, changes)
            return {"status": status, "body": body}
        return await self._answer(replica, work)

    async def stats(self, session_id: str | None = None, replica: str | None = None) -> dict[str, Any]:
        async def work() -> dict[str, Any]:
            if session_id is not None:
                return {"status": 200, "body": self.manager.get(session_id).stats.as_dict()}
            return {"status": 200, "body": [{"id": public_id(self.replica, s.id), "kind": s.kind,
                                             "replica": self.replica, **s.stats.as_dict()}
                                            for s in self.manager.sessions.values()]}
        return await self._answer(replica, work)

    async def metrics_text(self, replica: str | None = None) -> dict[str, Any]:
        from streamer.observe.prometheus import exposition

        self._mine(None)
        return {"status": 200, "replica": self.replica, "text": exposition(self.metrics, self.manager.counts())}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics: the policy below scales on these."""
        return {"sessions": float(sum(s.stylizes for s in self.manager.sessions.values())),
                "capacity": float(self.manager.max_sessions)}

    def check_health(self) -> None:
        if not self.worker._thread.is_alive():
            raise RuntimeError("the GPU worker thread has stopped")

    def __del__(self) -> None:
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.close(timeout=5.0)


def sessions_policy(ctx: Any) -> tuple[int, dict[str, Any]]:
    """Autoscaling on session count: enough replicas that one more session always has a free slot, within
    min_replicas..max_replicas (Serve clamps to them)."""
    metrics = ctx.aggregated_metrics or {}
    sessions = sum(metrics.get("sessions", {}).values())
    capacities = list(metrics.get("capacity", {}).values())
    if not capacities:
        return ctx.target_num_replicas, ctx.policy_state
    wanted = math.ceil((sessions + 1) / max(1.0, min(capacities)))
    low, high = ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas
    return max(low, min(high, wanted)), ctx.policy_state


class SessionRouter(FIFOMixin, RequestRouter):
    """A call with ``replica=ID`` goes to that replica while it runs; any other call (or one whose replica is
    gone) to any replica. Runs in the caller (the ingress), where it also lists the running replicas."""

    def update_replicas(self, replicas: list[Any]) -> None:
        super().update_replicas(replicas)
        # Serve ships this class to the ingress by value: its globals are a copy, not this module's.
        known = importlib.import_module("streamer.scale.serve_replica").KNOWN_REPLICAS
        known[self._deployment_id.name] = sorted(r.replica_id.unique_id for r in replicas)

    async def choose_replicas(self, candidate_replicas: list[Any], pending_request: Any = None) -> list[list[Any]]:
        wanted = pending_request.kwargs.get("replica") if pending_request is not None else None
        if wanted is not None:
            pinned = [r for r in candidate_replicas if r.replica_id.unique_id == wanted]
            if pinned:
                return [pinned]
        return [candidate_replicas] if candidate_replicas else []


async def gather_quietly(calls: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Await several replica calls; those that fail or time out are left out."""
    async def one(call: Any) -> Any:
        try:
            return await asyncio.wait_for(call, timeout)
        except Exception as exc:  # a replica that died or is busy starting: not in the answer
            log.info("a replica did not answer: %s", type(exc).__name__)
            return None
    results = await asyncio.gather(*(one(c) for c in calls.values()))
    return {key: result for key, result in zip(calls, results, strict=True) if result is not None}
