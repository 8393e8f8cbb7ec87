"""GStreamer's WebRTC stack (webrtcbin + libnice, what GStreamer-based WHIP/WHEP clients are built on)
publishes to and plays from `streamer serve`.

webrtcbin always makes an RSA certificate, and aiortc as DTLS client offers only ECDSA suites: before the
server took the DTLS server role, ICE completed and then DTLS failed with "no shared cipher".

The server runs in a network namespace of its own (``unshare -n``: only loopback there); the GStreamer
peers (tests/gst_webrtc_peer.py, under Debian's python3, since ``gi`` does not import in a venv) join it
with ``nsenter`` and add 127.0.0.1 to libnice's addresses, which it otherwise leaves out.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import SYSTEM_PYTHON
from tests.servers import serving, start_streamer
from tests.servers import stop_group as stop
from tests.test_browser import namespaces_work
from tests.test_server import run_async
from tests.webrtc_helpers import InvertingPipeline, new_pc

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "tests" / "gst_webrtc_peer.py"
PORT = 8080  # the namespace is fresh: every port is free
BASE = f"http://127.0.0.1:{PORT}"
WARNING = "DTLS handshake failed after ICE connected"


def gst_webrtc_missing() -> str | None:
    probe = ("import gi\n"
             "for name in ('Gst', 'GstSdp', 'GstWebRTC'): gi.require_version(name, '1.0')\n"
             "gi.require_version('Nice', '0.1')\n"
             "from gi.repository import Gst, GstSdp, GstWebRTC, Nice\n"
             "Gst.init(None)\n"
             "missing = [e for e in ('webrtcbin', 'nicesrc', 'dtlsenc', 'srtpenc', 'vp8enc', 'rtpvp8pay', "
             "'vp8dec', 'videotestsrc', 'appsink') if Gst.ElementFactory.find(e) is None]\n"
             "assert not missing, missing\n")
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEM_PYTHON}: {exc}"
    if result.returncode != 0:
        return ("GStreamer WebRTC missing (apt-get install python3-gi gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 "
                f"gstreamer1.0-nice gstreamer1.0-plugins-bad gstreamer1.0-plugins-good): {result.stderr[-300:]}")
    return None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """`streamer serve --preset passthrough` alone in a loopback-only namespace, ICE on 127.0.0.1."""
    reason = gst_webrtc_missing()
    if reason:
        pytest.skip(reason)
    if not namespaces_work():
        pytest.skip("cannot create a network namespace here (unshare -n needs root or user namespaces)")
    log = tmp_path / "server.log"
    served = start_streamer(["serve", "--preset", "passthrough", "--port", str(PORT), "--ice-address", "127.0.0.1"],
                            log, "serving on", timeout=60, cwd=ROOT,
                            prefix=["unshare", "-n", "--", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
    proc = served.process
    try:
        yield proc, log
    finally:
        stop(proc)
    assert proc.returncode == 0 and "shutting down" in log.read_text(), log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


def in_namespace(server: subprocess.Popen, *command: str) -> list[str]:
    return ["nsenter", f"--net=/proc/{server.pid}/ns/net", *command]


def gst_peer(server: subprocess.Popen, out: Path, *args: str) -> subprocess.Popen:
    """A GStreamer peer in the server's namespace; its JSON lines go to ``out``."""
    with open(out, "wb") as stdout:
        return subprocess.Popen(in_namespace(server, SYSTEM_PYTHON, str(PEER), *args), stdout=stdout,
                                stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]


def wait_event(out: Path, proc: subprocess.Popen, predicate, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events(out):
            if predicate(event):
                return event
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"no such event from the peer:\n{out.read_text()[-3000:]}")


def get_json(server: subprocess.Popen, path: str) -> dict:
    """GET from inside the namespace (the test itself stays outside it)."""
    fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    result = subprocess.run(in_namespace(server, SYSTEM_PYTHON, "-c", fetch, f"{BASE}{path}"),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_webrtcbin_publishes_with_whip_and_plays_with_whep(server, tmp_path: Path) -> None:
    proc, log = server
    published = tmp_path / "publish.jsonl"
    publisher = gst_peer(proc, published, "publish", f"{BASE}/whip", "--seconds", "120")
    try:
        connected = wait_event(published, publisher, lambda e: e.get("connection") in ("connected", "failed"), 60)
        assert connected["connection"] == "connected", (published.read_text()[-3000:], log.read_text())
        answered = wait_event(published, publisher, lambda e: e["event"] == "answered", 1)
        assert "a=setup:passive" in answered["answer"]  # the server is the DTLS server
        whip_id = answered["location"].split("/")[-1]
        # The server gets its frames (with no viewer yet, none is stylized and none counts as dropped).
        deadline = time.monotonic() + 30
        while True:
            stats = get_json(proc, f"/sessions/{whip_id}")
            if stats["received"] >= 10:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.5)

        played = tmp_path / "play.jsonl"
        player = gst_peer(proc, played, "play", f"{BASE}/whep", "--frames", "10", "--seconds", "60")
        try:
            assert player.wait(timeout=90) == 0, (played.read_text()[-3000:], log.read_text())
        finally:
            stop(player)
        frames = [e for e in events(played) if e["event"] == "frame"]
        assert len(frames) == 10
        for frame in frames:  # the publisher's red test pattern, at its size, through the server
            assert (frame["width"], frame["height"]) == (320, 240), frame
            red, green, blue = frame["mean"]
            assert red > 180 and green < 60 and blue < 60, frame
        assert get_json(proc, f"/sessions/{whip_id}")["frames"] >= 10  # stylized and sent to the viewer
        assert publisher.poll() is None, published.read_text()[-3000:]  # still streaming
    finally:
        stop(publisher)
    assert "WARNING" not in log.read_text(), log.read_text()


@pytest.mark.slow
def test_a_failed_dtls_handshake_is_logged_with_its_cause(server, tmp_path: Path) -> None:
    """A webrtcbin peer that insists on being the DTLS server (offer ``a=setup:passive``) makes aiortc the
    client again: no shared cipher. The server says so at WARNING level and closes the session."""
    proc, log = server
    published = tmp_path / "publish.jsonl"
    publisher = gst_peer(proc, published, "publish", f"{BASE}/whip", "--seconds", "60", "--offer-setup", "passive")
    try:
        assert publisher.wait(timeout=90) == 1, published.read_text()[-3000:]
    finally:
        stop(publisher)
    states = [e for e in events(published) if e["event"] == "state"]
    assert states[-1] == {"event": "state", "connection": "failed", "ice": "completed"}, states  # ICE got through
    whip_id = next(e for e in events(published) if e["event"] == "answered")["location"].split("/")[-1]
    deadline = time.monotonic() + 20
    while WARNING not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    warnings = [line for line in log.read_text().splitlines() if WARNING in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("WARNING") and f"session {whip_id} (whip)" in warnings[0], warnings
    assert "certificate or cipher suites" in warnings[0], warnings
    deadline = time.monotonic() + 10
    while get_json(proc, "/sessions")["sessions"]:
        assert time.monotonic() < deadline, get_json(proc, "/sessions")
        time.sleep(0.2)


def test_answer_takes_the_dtls_server_role_only_when_the_offer_leaves_the_choice() -> None:
    """actpass -> passive (aiortc is the DTLS server); an offer that picked a role gets the other one."""

    async def scenario() -> None:
        pc = new_pc()
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        await pc.close()
        assert "a=setup:actpass" in offer
        async with serving(InvertingPipeline()) as server:
            base = server.url
            async with aiohttp.ClientSession() as http:
                for offered, answered in (("actpass", "passive"), ("active", "passive"), ("passive", "active")):
                    async with http.post(f"{base}/whip", data=offer.replace("a=setup:actpass", f"a=setup:{offered}"),
                                         headers={"Content-Type": "application/sdp"}) as response:
                        assert response.status == 201, await response.text()
                        answer = await response.text()
                    setups = {line for line in answer.splitlines() if line.startswith("a=setup:")}
                    assert setups == {f"a=setup:{answered}"}, (offered, answer)
                    async with http.delete(f"{base}{response.headers['Location']}") as response:
                        assert response.status == 200

    run_async(scenario)
