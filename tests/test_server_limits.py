"""The WebRTC server's limits (issue 10): offers that never connect, viewers that vanish, broken or
oversized offers, and the frames a WHIP publisher sends with nobody watching. Real aiortc peers over
127.0.0.1 against the real app (in-process on a real port)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time

import aiohttp
import pytest

from tests.servers import ROOT, serving
from tests.test_server import get_json, is_inverted, run_async, streamer, wait_sessions
from tests.webrtc_helpers import InvertingPipeline, Peer, new_pc, open_browser_like, whep_play, whip_publish

ACCEPTED = "accepted VP8, H.264 Baseline packetization-mode=1, H.264 Constrained Baseline packetization-mode=1"


async def viewer_offer() -> str:
    """A real aiortc WHEP offer (recvonly video), its peer closed at once: it will never connect."""
    pc = new_pc()
    pc.addTransceiver("video", direction="recvonly")
    await asyncio.wait_for(pc.setLocalDescription(await pc.createOffer()), 10)
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def with_codec(sdp: str, rtpmap: str, fmtp: str | None = None) -> str:
    """The offer with its video codecs replaced by one (payload type 98)."""
    lines = [line for line in sdp.splitlines() if not line.startswith(("a=rtpmap:", "a=rtcp-fb:", "a=fmtp:"))]
    at = next(i for i, line in enumerate(lines) if line.startswith("m=video"))
    lines[at] = " ".join(lines[at].split()[:3] + ["98"])
    lines[at + 1:at + 1] = [f"a=rtpmap:98 {rtpmap}"] + ([f"a=fmtp:98 {fmtp}"] if fmtp else [])
    return "\r\n".join(lines) + "\r\n"


async def post_sdp(url: str, sdp: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=sdp, headers={"Content-Type": "application/sdp"},
                             timeout=aiohttp.ClientTimeout(total=30)) as response:
            return response.status, await response.text()


async def metric(base: str, name: str) -> float:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics:\n{text}"
    return float(match.group(1))


def test_offers_that_never_connect_free_their_slots() -> None:
    """8 WHEP offers whose peer never connects fill every viewer slot; after --connect-timeout they are
    closed and a real viewer gets its answer (before: 503 for the life of the process)."""

    async def scenario() -> None:
        async with serving(InvertingPipeline(), max_viewers=8, connect_timeout=3.0) as server:
            base = server.url
            publisher = await whip_publish(base, width=160, height=120)
            viewer: Peer | None = None
            try:
                for _ in range(8):
                    status, text = await post_sdp(f"{base}/whep", await viewer_offer())
                    assert status == 201, text
                with pytest.raises(RuntimeError, match="503.*limit of 8 viewers"):
                    await whep_play(base)
                start = time.monotonic()
                while (await get_json(f"{base}/sessions"))["counts"]["whep"]:
                    assert time.monotonic() - start < 20, "offers that never connected still hold their slots"
                    await asyncio.sleep(0.2)
                print(f"8 unconnected viewers closed {time.monotonic() - start:.1f} s after the 9th was refused")
                viewer = await whep_play(base)
                await viewer.wait_frames(5)
                assert any(is_inverted(f) for f in viewer.frames)
                assert (await get_json(f"{base}/sessions"))["counts"] == {"browser": 0, "whip": 1, "whep": 1}
            finally:
                await publisher.close()
                if viewer is not None:
                    await viewer.close()

    run_async(scenario, timeout=90)


def test_killed_viewer_is_freed_within_seconds() -> None:
    """A WHEP viewer killed with SIGKILL (no DELETE): its session goes when it stops answering ICE consent
    checks, about --idle-timeout (10 s) later; aioice's own expiry took about 35 s."""

    async def scenario() -> None:
        async with serving(InvertingPipeline()) as server:
            base = server.url
            publisher = await whip_publish(base, width=160, height=120)
            viewer = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "tests" / "webrtc_helpers.py"), "viewer", base,
                stdout=asyncio.subprocess.PIPE, cwd=ROOT, start_new_session=True)
            try:
                line = await asyncio.wait_for(viewer.stdout.readline(), 30)
                assert line.startswith(b"watching /whep/"), line
                assert (await get_json(f"{base}/sessions"))["counts"]["whep"] == 1
            finally:
                viewer.kill()
                await asyncio.wait_for(viewer.wait(), 10)
            took = await wait_sessions(base, 1, timeout=22)  # the publisher stays
            print(f"killed viewer freed after {took:.1f} s")
            assert (await get_json(f"{base}/sessions"))["counts"] == {"browser": 0, "whip": 1, "whep": 0}
            await publisher.close()

    run_async(scenario, timeout=90)


def test_broken_and_oversized_offers_get_400_naming_the_problem() -> None:
    """Cut off, no fingerprint, no codec in common, 2,000 m-lines: each a one-line 400 that says what is
    wrong, no session left behind, and a viewer already playing keeps receiving frames throughout."""

    async def scenario() -> None:
        async with serving(InvertingPipeline()) as server:
            base = server.url
            publisher = await whip_publish(base, width=160, height=120)
            viewer = await whep_play(base)
            try:
                await viewer.wait_frames(5)
                offer = await viewer_offer()
                media = offer.index("m=video")
                creds = "".join(line + "\r\n" for line in offer.splitlines()
                                if line.startswith(("a=ice-ufrag", "a=ice-pwd", "a=fingerprint", "a=setup")))
                section = ("m=video 9 UDP/TLS/RTP/SAVPF 97\r\nc=IN IP4 0.0.0.0\r\na=mid:{}\r\na=recvonly\r\n"
                           "a=rtcp-mux\r\na=rtpmap:97 VP8/90000\r\n")
                huge = offer[:media] + creds + "".join(section.format(i) for i in range(2000))
                assert len(huge) < 256 * 1024  # under the body limit: the offer itself is the problem
                cases = {
                    "cut off": (offer[:offer.index("a=fingerprint") + 30],
                                "malformed SDP offer: its last line 'a=fingerprint:"),
                    "no fingerprint": ("".join(line for line in offer.splitlines(True)
                                               if not line.startswith("a=fingerprint")),
                                       "media section 1 (video) has no a=fingerprint"),
                    "no ice-pwd": ("".join(line for line in offer.splitlines(True) if not line.startswith("a=ice-pwd")),
                                   "media section 1 (video) has no a=ice-pwd"),
                    "VP9 only": (with_codec(offer, "VP9/90000", "profile-id=0"),
                                 f"no video codec in common (media section 1): offered VP9; {ACCEPTED}"),
                    "H.264 High only": (with_codec(offer, "H264/90000", "level-asymmetry-allowed=1;"
                                                   "packetization-mode=1;profile-level-id=64001f"),
                                        f"offered H.264 High packetization-mode=1; {ACCEPTED}"),
                    "2,000 m-lines": (huge, "it has 2000 media sections (m=); at most 8 are accepted"),
                }
                stall = 0.0

                async def watch_loop() -> None:  # how long the event loop is kept from running
                    nonlocal stall
                    while True:
                        before = time.monotonic()
                        await asyncio.sleep(0.01)
                        stall = max(stall, time.monotonic() - before - 0.01)

                ticker = asyncio.ensure_future(watch_loop())
                try:
                    for name, (sdp, expected) in cases.items():
                        for path in ("/whep", "/whip"):
                            stall, frames = 0.0, len(viewer.frames)
                            status, text = await post_sdp(f"{base}{path}", sdp)
                            assert status == 400 and expected in text, (name, path, status, text[:300])
                            assert text.count("\n") == 1, text
                            counts = (await get_json(f"{base}/sessions"))["counts"]
                            assert counts == {"browser": 0, "whip": 1, "whep": 1}, (name, counts)
                            if name == "2,000 m-lines":
                                print(f"{path} 2,000 m-line offer: 400 with the loop stalled at most "
                                      f"{stall * 1000:.0f} ms (before: 2.4 s)")
                                await viewer.wait_frames(frames + 5, timeout=10)
                    async with aiohttp.ClientSession() as http:  # the browser page's route too
                        async with http.post(f"{base}/offer", json={"sdp": cases["cut off"][0], "type": "offer"}) as r:
                            assert r.status == 400 and "cut off" in await r.text()
                finally:
                    ticker.cancel()
            finally:
                await viewer.close()
                await publisher.close()

    run_async(scenario, timeout=90)


def test_whip_frames_with_no_viewer_are_received_not_dropped() -> None:
    """/metrics counts the frames publishers send; with nobody watching none of them is "dropped"."""

    async def scenario() -> None:
        async with serving(InvertingPipeline()) as server:
            base = server.url
            publisher = await whip_publish(base, width=160, height=120)
            try:
                start = time.monotonic()
                while (received := await metric(base, "streamer_frames_received_total")) < 30:
                    assert time.monotonic() - start < 20, f"only {received:.0f} frames received"
                    await asyncio.sleep(0.2)
                assert await metric(base, 'streamer_frames_dropped_total{where="capture"}') == 0
                assert await metric(base, "streamer_frames_out_total") == 0  # nothing stylized for nobody
                session = (await get_json(f"{base}/sessions"))["sessions"][0]
                assert session["received"] >= 30 and session["dropped"] == 0, session
            finally:
                await publisher.close()

    run_async(scenario)


def test_browser_session_counts_received_frames() -> None:
    """A browser's camera frames are publisher frames too."""

    async def scenario() -> None:
        async with serving(InvertingPipeline()) as server:
            base = server.url
            peer = await open_browser_like(base, width=96, height=64, channel=False)
            try:
                await peer.wait_frames(5)
                assert await metric(base, "streamer_frames_received_total") >= 5
            finally:
                await peer.close()

    run_async(scenario)


def test_serve_refuses_a_bad_connect_timeout() -> None:
    result = subprocess.run(streamer("--connect-timeout", "0", "--preset", "passthrough"), capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["streamer: error: --connect-timeout must be positive, got 0.0"], result.stderr
