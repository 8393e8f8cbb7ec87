"""`streamer serve --ray`: the real CLI on a local Ray cluster (Serve, 2 replicas of the tiny preset on CPU)
in a loopback-only network namespace, with real aiortc peers signalling through the ingress.

The test's peers and HTTP calls run on an event loop whose thread joined the server's namespace (setns is
per thread); media flows between them and the replicas directly. One cluster start for the module.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from servers import ROOT, Served, start_streamer
from webrtc_helpers import Peer, loopback_ice, open_browser_like, whep_play, whip_publish

pytest.importorskip("ray.serve", reason='Ray Serve is an optional extra: pip install -e ".[ray]"')

PORT = 8080  # the namespace is fresh: every port is free
BASE = f"http://127.0.0.1:{PORT}"
TOKEN = "serve-ray-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
       "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
CLONE_NEWNET = 0x40000000
SIZE = {"width": 160, "height": 120, "fps": 10.0}


class NamespaceLoop:
    """An asyncio loop on a thread inside process ``pid``'s network namespace (threads it starts, such as
    the loop's executor, inherit it)."""

    def __init__(self, pid: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.error: str | None = None
        ready = threading.Event()

        def run() -> None:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    self.error = os.strerror(ctypes.get_errno())
            finally:
                os.close(fd)
            ready.set()
            if self.error is None:
                self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        if self.error:
            pytest.skip(f"cannot join the server's network namespace: {self.error}")

    def run(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def http(method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{BASE}{path}", headers={**AUTH, **(headers or {})},
                                   timeout=aiohttp.ClientTimeout(total=30), **kwargs) as response:
            return response.status, await response.text()


async def replicas() -> list[dict[str, Any]]:
    status, text = await http("GET", "/healthz")
    return json.loads(text)["replicas"] if status == 200 else []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, NamespaceLoop]]:
    from test_browser import namespaces_work

    if not namespaces_work():
        pytest.skip("cannot create a network namespace here (unshare -n needs root or user namespaces)")
    log = tmp_path_factory.mktemp("serve-ray") / "server.log"
    served = start_streamer(
        ["serve", "--ray", "local", "--replicas", "2", "--replica-cpus", "0.4", "--max-sessions", "2",
         "--preset", "tiny", "--device", "cpu", "--port", str(PORT), "--token", TOKEN, "--ice-address", "127.0.0.1",
         "--idle-timeout", "5"],
        log, r"serving on (http://\S+?)/ ", env=ENV, timeout=240, cwd=ROOT,
        prefix=["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"'])
    loop = NamespaceLoop(served.process.pid)
    try:
        deadline = time.monotonic() + 60
        while len(loop.run(replicas())) < 2:  # serve.run returns when both replicas run; the router may lag
            assert time.monotonic() < deadline, served.text()
            time.sleep(0.5)
        with loopback_ice():
            yield served, loop
    finally:
        loop.close()
        code = served.stop()
        text = served.text()
        assert code == 0 and "shutting down" in text, text[-3000:]
        assert "Traceback" not in text.split("shutting down")[0], text[-3000:]


def replica_of(peer: Peer) -> str:
    return peer.session_id.split(".")[0]


def stylized(peer: Peer) -> bool:
    """The tiny model's frames: not the split picture sent (bright left, dark right)."""
    last = peer.frames[-1]
    return not (abs(last.left.mean() - 200) < 25 and abs(last.right.mean() - 40) < 25)


@pytest.mark.slow
def test_sessions_spread_over_replicas_and_follow_their_replica(cluster: tuple[Served, NamespaceLoop]) -> None:
    served, loop = cluster
    peers: list[Peer] = []

    async def scenario() -> dict[str, Any]:
        import aioice.ice

        from streamer.server.ice import expire_consent_after

        saved = aioice.ice.CONSENT_FAILURES, aioice.ice.CONSENT_INTERVAL
        expire_consent_after(4)  # the peers' own ICE consent: they learn in seconds that a replica is gone
        try:
            for _ in range(4):  # one after another: placement sees each new session
                peers.append(await open_browser_like(BASE, headers=AUTH, channel=False, **SIZE))
            for peer in peers:
                await peer.wait_frames(5, timeout=60)
            result: dict[str, Any] = {"stylized": [stylized(p) for p in peers]}
            result["full"] = await http("POST", "/offer", json={"sdp": "v=0", "type": "offer"})
            result["metrics"] = (await http("GET", "/metrics"))[1]
            result["listed"] = sorted(s["id"] for s in json.loads((await http("GET", "/sessions"))[1])["sessions"])
            # A session's later requests reach the replica that holds it.
            result["params"] = await http("POST", f"/sessions/{peers[0].session_id}/params", json={"strength": 0.5})
            # A change as large as a style image (past the 256 kB of an offer) is read and judged, not 413.
            result["large"] = await http("POST", f"/sessions/{peers[0].session_id}/params",
                                         json={"prompt": "x" * 300_000})
            result["stats"] = await http("GET", f"/sessions/{peers[1].session_id}")
            other = [p for p in peers if replica_of(p) != replica_of(peers[0])][0]
            forged = f"{replica_of(other)}.{peers[0].session_id.split('.', 1)[1]}"
            result["forged"] = await http("POST", f"/sessions/{forged}/params", json={"strength": 0.5})
            result["delete"] = await http("DELETE", f"/sessions/{other.session_id}")
            result["delete_again"] = await http("DELETE", f"/sessions/{other.session_id}")

            # Kill the replica that holds the first session: its sessions end, the others go on.
            victim = replica_of(peers[0])
            pid = next(r["pid"] for r in await replicas() if r["replica"] == victim)
            os.kill(pid, signal.SIGKILL)
            late = await open_browser_like(BASE, headers=AUTH, channel=False, **SIZE)
            peers.append(late)
            result["late"] = replica_of(late)
            mine = [p for p in peers[:4] if replica_of(p) == victim]
            deadline = time.monotonic() + 40
            while any(p.pc.connectionState not in ("closed", "failed") for p in mine):
                assert time.monotonic() < deadline, [p.pc.connectionState for p in mine]
                await asyncio.sleep(0.2)
            survivors = [p for p in peers if replica_of(p) != victim and p is not other]
            for peer in survivors:
                count = len(peer.frames)
                await peer.wait_frames(count + 5, timeout=30)
            result["survivors"] = len(survivors)
            deadline = time.monotonic() + 60  # Serve brings a replica back
            while len(now := await replicas()) < 2:
                assert time.monotonic() < deadline, now
                await asyncio.sleep(0.5)
            result["replicas_after"] = sorted(r["replica"] for r in now)
            result["victim"] = victim

            # WHIP in and WHEP out through the ingress: the viewer joins the publisher's replica.
            publisher = await whip_publish(BASE, headers=AUTH, **SIZE)
            peers.append(publisher)
            viewer = await whep_play(BASE, headers=AUTH)
            peers.append(viewer)
            await viewer.wait_frames(5, timeout=60)
            result["whip"], result["whep"] = publisher.location, viewer.location
            result["whip_delete"] = await http("DELETE", publisher.location)
            deadline = time.monotonic() + 30  # the publisher gone, its viewer is closed too
            while viewer.pc.connectionState not in ("closed", "failed"):
                assert time.monotonic() < deadline, viewer.pc.connectionState
                await asyncio.sleep(0.2)
            return result
        finally:
            aioice.ice.CONSENT_FAILURES, aioice.ice.CONSENT_INTERVAL = saved
            for peer in peers:
                await peer.close()

    result = loop.run(scenario(), timeout=240)
    holders = [replica_of(p) for p in peers[:4]]
    assert sorted(holders.count(r) for r in set(holders)) == [2, 2], holders
    assert all(result["stylized"]), result["stylized"]
    assert result["full"][0] == 503 and "every replica is at its limit of 2 sessions" in result["full"][1]
    assert result["full"][1].count("\n") == 1

    metrics = result["metrics"]
    for replica in set(holders):
        assert re.search(rf'streamer_frames_out_total{{replica="{replica}"}} [1-9]', metrics), metrics
        assert f'streamer_sessions{{kind="browser",replica="{replica}"}} 2' in metrics
    assert metrics.count("# TYPE streamer_frames_out_total counter") == 1  # one family, a sample per replica

    status, body = result["params"]
    assert status == 200 and '"ok": true' in body.replace('":true', '": true'), body
    assert result["large"][0] == 400 and "prompt" in result["large"][1], result["large"]
    assert result["stats"][0] == 200 and json.loads(result["stats"][1])["frames"] > 0
    assert result["forged"][0] == 404 and '"ok": false' in result["forged"][1].replace('":false', '": false')
    assert result["delete"][0] == 200 and result["delete_again"][0] == 404

    assert result["listed"] == sorted(p.session_id for p in peers[:4])
    victim = result["victim"]
    assert result["late"] != victim  # the new offer landed on the live replica
    assert result["survivors"] == 2
    assert victim not in result["replicas_after"] and len(result["replicas_after"]) == 2
    whip_replica = result["whip"].split("/")[-1].split(".")[0]
    assert result["whep"].split("/")[-1].split(".")[0] == whip_replica and whip_replica in result["replicas_after"]
    assert result["whip_delete"][0] == 200
    assert "Traceback" not in served.text()


@pytest.mark.slow
def test_the_page_sets_the_token_cookie_and_the_cookie_is_enough(cluster: tuple[Served, NamespaceLoop]) -> None:
    served, loop = cluster

    async def visit() -> tuple[int, str, int, int]:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            async with session.get(f"{BASE}/?token={TOKEN}") as page:
                cookie = page.headers.get("Set-Cookie", "")
                status = page.status
            async with session.get(f"{BASE}/metrics") as metrics:
                with_cookie = metrics.status
        async with aiohttp.ClientSession() as session, session.get(f"{BASE}/?token=wrong") as page:
            wrong = "Set-Cookie" in page.headers
        return status, cookie, with_cookie, wrong

    status, cookie, with_cookie, wrong = loop.run(visit())
    assert status == 200 and cookie.startswith("streamer_token=") and "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()
    assert with_cookie == 200 and not wrong


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no-token", "wrong-token", "forged-host", "other-origin", "wrong-type",
                                  "bad-json", "too-large", "unknown-session", "unknown-route"])
def test_the_ingress_guards_like_streamer_serve(cluster: tuple[Served, NamespaceLoop], case: str) -> None:
    served, loop = cluster
    offer = {"json": {"sdp": "v=0", "type": "offer"}}
    requests = {
        "no-token": ("POST", "/offer", dict(headers={"Authorization": ""}, **offer)),
        "wrong-token": ("POST", "/offer", dict(headers={"Authorization": "Bearer nope"}, **offer)),
        "forged-host": ("GET", "/metrics", dict(headers={"Host": "evil.example"})),
        "other-origin": ("POST", "/offer", dict(headers={"Origin": "http://evil.example"}, **offer)),
        "wrong-type": ("POST", "/offer", dict(data="{}", headers={"Content-Type": "text/plain"})),
        "bad-json": ("POST", "/offer", dict(data="{[", headers={"Content-Type": "application/json"})),
        "too-large": ("POST", "/offer", dict(data="[" * 300_000, headers={"Content-Type": "application/json"})),
        "unknown-session": ("DELETE", "/sessions/nothing.here", dict()),
        "unknown-route": ("GET", "/nowhere", dict()),
    }
    status, text = loop.run(http(*requests[case][:2], **requests[case][2]))
    expected = {"no-token": (401, "missing or wrong token"), "wrong-token": (401, "missing or wrong token"),
                "forged-host": (421, "is not this server"), "other-origin": (403, "requests from other sites"),
                "wrong-type": (415, "Content-Type: application/json"), "bad-json": (400, "not valid JSON"),
                "too-large": (413, "larger than 262144 bytes"),
                "unknown-session": (404, "no such session"), "unknown-route": (404, "no route /nowhere")}[case]
    assert (status, expected[1] in text) == (expected[0], True), (status, text)
    assert text.count("\n") <= 1 and "Traceback" not in text


def test_serve_deploy_config_builds_the_application(tmp_path: Path) -> None:
    """configs/serve-ray.yaml is a valid Serve config whose import path builds this application (with the
    token file it names here in tmp_path); a token written in the config itself is refused."""
    import yaml
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "configs" / "serve-ray.yaml").read_text()))
    (app,) = config.applications
    module, _, name = app.import_path.partition(":")
    builder = getattr(__import__(module, fromlist=[name]), name)
    (tmp_path / "token").write_text("a-token\n")
    built = builder({**app.args, "token_file": str(tmp_path / "token")})
    assert isinstance(built, Application)
    ingress = built._bound_deployment
    assert ingress.name == "ingress"
    replica = ingress.init_args[0]._bound_deployment if hasattr(ingress, "init_args") else None
    assert replica is not None and replica.name == "replica" and replica.num_replicas == app.args["replicas"]
    with pytest.raises(ValueError, match="not in the config file"):
        builder({**app.args, "token": "visible"})
    with pytest.raises(ValueError, match="--max-sessions must be at least 1"):
        builder({**app.args, "token_file": str(tmp_path / "token"), "max_sessions": 0})


def test_ray_flags_without_ray_and_missing_serve_are_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "streamer", "serve", "--replicas", "2", "--preset", "passthrough"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **ENV})
    assert done.returncode == 2
    assert done.stderr.strip() == ("streamer: error: --replicas needs --ray (without it one process serves "
                                   "every session)")
    for flags, message in ((["--replicas", "2", "--max-replicas", "3"], "give --replicas N, or --min-replicas/"
                            "--max-replicas for autoscaling, not both"),
                           (["--min-replicas", "3", "--max-replicas", "2"], "--min-replicas 3 is more than "
                            "--max-replicas 2"),
                           (["--source", "testsrc"], "--source is not supported with --ray")):
        done = subprocess.run([sys.executable, "-m", "streamer", "serve", "--ray", "local", *flags, "--preset",
                               "passthrough"], capture_output=True, text=True, timeout=60, env={**os.environ, **ENV})
        assert done.returncode == 2 and done.stderr.startswith(f"streamer: error: {message}"), done.stderr
        assert done.stderr.count("\n") == 1  # refused before any cluster starts
    # More than the cluster holds: Serve would wait for ever; refused once the local cluster is up.
    done = subprocess.run(["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable,
                           "-m", "streamer", "serve", "--ray", "local", "--replicas", "64", "--preset", "passthrough",
                           "--port", "8081"], capture_output=True, text=True, timeout=120, env={**os.environ, **ENV},
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr[-2000:]
    assert re.search(r"streamer: error: 64 replica\(s\) of --replica-cpus 1 and the ingress need 64.1 CPUs; "
                     r"the Ray cluster has \d+ \(lower --replica-cpus or --replicas\)\n", done.stderr), done.stderr
    code = ("import sys; sys.modules['ray.serve'] = None; from streamer.cli import main; "
            "sys.exit(main(['serve', '--ray', 'local', '--preset', 'passthrough']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **ENV})
    assert done.returncode == 2
    assert done.stderr.strip() == ('streamer: error: --ray needs Ray Serve, which the default install leaves out: '
                                   'pip install "streamer[ray]" (or pip install "ray[serve]>=2.40")')


def test_autoscaling_keeps_a_free_session_slot_within_min_and_max() -> None:
    """--min-replicas/--max-replicas: the deployment autoscales with the session-count policy, which asks
    for enough replicas that one more session has room, clamped to the bounds."""
    from ray.serve.config import AutoscalingContext

    from streamer.scale.serve_ray import Scaling, build_app
    from streamer.scale.serve_replica import sessions_policy
    from streamer.server.app import ServerOptions

    def decide(sessions: list[float], capacity: float = 2, low: int = 1, high: int = 3) -> int:
        replicas = [f"r{i}" for i in range(len(sessions))]
        ctx = AutoscalingContext(
            deployment_id=None, deployment_name="replica", app_name="streamer", current_num_replicas=len(sessions),
            target_num_replicas=len(sessions), running_replicas=replicas, total_num_requests=0,
            total_queued_requests=0, raw_metrics=None, capacity_adjusted_min_replicas=low,
            capacity_adjusted_max_replicas=high, policy_state={}, last_scale_up_time=None,
            last_scale_down_time=None, current_time=None, config=None,
            aggregated_metrics={"sessions": dict(zip(replicas, sessions, strict=True)),
                                "capacity": dict.fromkeys(replicas, capacity)})
        return sessions_policy(ctx)[0]

    assert decide([0]) == 1 and decide([1]) == 1
    assert decide([2]) == 2  # full: one more replica before the next offer
    assert decide([2, 2]) == 3 and decide([2, 2, 2]) == 3  # never past max
    assert decide([0, 0, 0]) == 1 and decide([0, 0], low=2) == 2  # down to min

    from pipelines.config import PipelineConfig

    app = build_app(ServerOptions(), PipelineConfig(family="passthrough"), Scaling(min_replicas=1, max_replicas=3))
    replica = app._bound_deployment.init_args[0]._bound_deployment
    autoscaling = replica._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (1, 3)
    assert autoscaling.policy.policy_function == "streamer.scale.serve_replica:sessions_policy"


@pytest.mark.slow
def test_a_replica_that_cannot_load_the_model_is_one_line(tmp_path: Path) -> None:
    from test_browser import namespaces_work

    if not namespaces_work():
        pytest.skip("cannot create a network namespace here (unshare -n needs root or user namespaces)")
    env = {**os.environ, **ENV, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-cache")}  # no model
    done = subprocess.run(["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable,
                           "-m", "streamer", "serve", "--ray", "local", "--replica-cpus", "0.5", "--preset",
                           "lcm-dreamshaper", "--device", "cpu"], capture_output=True, text=True, timeout=240,
                          env=env, stdin=subprocess.DEVNULL)
    errors = [line for line in done.stderr.splitlines() if line.startswith("streamer: error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert "the Serve application did not start: offline" in errors[0] and "Traceback" not in done.stderr
