"""`streamer serve` passes a publisher's Opus audio to its viewers (and a page's microphone back to it),
unchanged and held for the stream's measured video delay. Real aiortc peers over 127.0.0.1 against the real
app in-process; the slow tests run the server as a process in a loopback-only namespace with two different
WebRTC viewers (aiortc and GStreamer's webrtcbin) and measure flash-to-click offsets (tests/av_webrtc.py)."""

from __future__ import annotations

import asyncio
import functools
import statistics
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCRtpSender
from aiortc.mediastreams import AudioStreamTrack

from streamer.eval.av_sync import make_sync_clip
from tests.av_measure import SYSTEM_PYTHON, measure_whip_to_whep
from tests.av_webrtc import OpusPacketTrack, watch
from tests.servers import serving
from tests.test_browser import namespaces_work
from tests.test_gst_webrtc import gst_webrtc_missing
from tests.test_server import run_async
from tests.webrtc_helpers import InvertingPipeline, PatternTrack, Peer, _whip_like, new_pc, open_browser_like

FRAME = 1 / 30  # one video frame at 30 fps: the allowed offset between a flash and its click


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sync_clip(tmp_path_factory.mktemp("clip") / "clip.mkv", seconds=4.0, size=(160, 96)).path


async def publish(base_url: str, *audio: object) -> Peer:
    """WHIP: the split pattern and the given audio tracks."""
    pc = new_pc()
    pc.addTransceiver(PatternTrack(), direction="sendonly")
    for track in audio:
        pc.addTransceiver(track, direction="sendonly")
    return await _whip_like(f"{base_url}/whip", pc, Peer(pc), None)


async def sessions(base_url: str) -> list[dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/sessions") as response:
            return (await response.json())["sessions"]


async def metrics(base_url: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/metrics") as response:
            return await response.text()


def sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


async def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.2)


def test_opus_reaches_whep_viewers_byte_for_byte_after_the_video_delay() -> None:
    """The viewer gets the publisher's Opus packets themselves (no decode, no re-encode), each one about the
    stream's video delay (a model taking 0.15 s a frame) after it was sent; counted in /sessions and
    /metrics."""

    async def scenario() -> None:
        async with serving(InvertingPipeline(delay=0.15)) as server:
            sound = OpusPacketTrack()
            publisher = await publish(server.url, sound)
            viewer = await watch(server.url)
            try:
                await wait_for(lambda: _enough(viewer, 150))
                listed = await sessions(server.url)
                text = await metrics(server.url)
            finally:
                await viewer.pc.close()
                await publisher.close()
            clip_payloads = [payload for _, payload in sound.packets]
            got = [payload for _, _, payload in viewer.audio]
            looped = clip_payloads * 4  # the track goes round the clip
            assert any(got == looped[start:start + len(got)] for start in range(len(clip_payloads))), \
                "not the publisher's packets, in order"
            lags = sound.lags(viewer.audio)
            whip = next(s for s in listed if s["kind"] == "whip")
            whep = next(s for s in listed if s["kind"] == "whep")
            delay = whip["audio_delay_ms"] / 1000
            assert 0.15 <= delay < 1.0, whip  # the model's time and a frame's wait, not nothing
            assert abs(statistics.median(lags) - delay) < 0.08, (statistics.median(lags), whip)
            assert whip["audio_in"] >= len(got) and whep["audio_out"] >= len(got) - 5, (whip, whep)
            assert sample(text, 'streamer_audio_packets_total{direction="in"}') >= whip["audio_in"]
            assert sample(text, 'streamer_audio_packets_total{direction="out"}') >= whep["audio_out"]
            assert sample(text, "streamer_audio_delay_seconds") == pytest.approx(delay, abs=0.1)
            assert abs(sample(text, 'streamer_av_offset_seconds{sink="webrtc"}')) < 0.5

    run_async(scenario)


async def _enough(viewer, count: int) -> bool:
    return len(viewer.audio) >= count


def test_audio_follows_the_video_delay_measured_not_a_constant() -> None:
    """The same path with a fast model holds audio for far less time."""

    async def scenario() -> None:
        async with serving(InvertingPipeline(delay=0.0)) as server:
            sound = OpusPacketTrack()
            publisher = await publish(server.url, sound)
            viewer = await watch(server.url)
            try:
                await wait_for(lambda: _enough(viewer, 150))
                whip = next(s for s in await sessions(server.url) if s["kind"] == "whip")
            finally:
                await viewer.pc.close()
                await publisher.close()
            lags = sound.lags(viewer.audio)
            assert whip["audio_delay_ms"] < 120, whip
            assert statistics.median(lags) < 0.15, lags

    run_async(scenario)


def test_a_viewer_that_offers_no_audio_gets_video_only(clip: Path) -> None:
    async def scenario() -> None:
        async with serving(InvertingPipeline()) as server:
            publisher = await publish(server.url, OpusPacketTrack(clip))
            viewer = await watch(server.url, audio=False)
            try:
                assert "m=audio" not in viewer.pc.remoteDescription.sdp
                await wait_for(lambda: _frames(viewer, 10))
            finally:
                await viewer.pc.close()
                await publisher.close()
            assert viewer.audio == []

    run_async(scenario)


async def _frames(viewer, count: int) -> bool:
    return len(viewer.video) >= count


def test_audio_that_is_not_opus_is_not_passed_on() -> None:
    """A publisher sending PCMU: its sound is read and dropped; the viewer's audio is inactive."""

    async def scenario() -> None:
        async with serving(InvertingPipeline()) as server:
            pc = new_pc()
            pc.addTransceiver(PatternTrack(), direction="sendonly")
            transceiver = pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
            transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("audio").codecs
                                             if c.mimeType == "audio/PCMU"])
            publisher = await _whip_like(f"{server.url}/whip", pc, Peer(pc), None)
            viewer = await watch(server.url)
            try:
                await wait_for(lambda: _frames(viewer, 10))
                listed = await sessions(server.url)
                answer = viewer.pc.remoteDescription.sdp
            finally:
                await viewer.pc.close()
                await publisher.close()
            audio = answer[answer.index("m=audio"):]
            assert "a=inactive" in audio or "a=recvonly" in audio, audio
            assert viewer.audio == []
            assert next(s for s in listed if s["kind"] == "whip")["audio_in"] == 0

    run_async(scenario)


def test_the_page_microphone_comes_back_with_the_stylized_video(clip: Path) -> None:
    """A browser-like peer (/offer) that sends Opus gets its sound back, delayed like its video; one that
    sends none gets none."""

    async def scenario() -> None:
        async with serving(InvertingPipeline(delay=0.05)) as server:
            peer = await open_browser_like(server.url, channel=False, audio=OpusPacketTrack(clip))
            silent = await open_browser_like(server.url, channel=False)
            try:
                await wait_for(lambda: _audio_back(peer, 50))
                listed = {s["id"]: s for s in await sessions(server.url)}
            finally:
                await peer.close()
                await silent.close()
            assert not any(t.kind == "audio" for t in silent.tracks), silent.tracks
            mine = listed[peer.session_id]
            assert mine["audio_in"] >= 50 and mine["audio_out"] >= 50 and mine["audio_delay_ms"] >= 50, mine
            assert listed[silent.session_id]["audio_in"] == 0

    run_async(scenario)


async def _audio_back(peer: Peer, count: int) -> bool:
    return peer.audio_packets >= count


# ---- through the `serve` process, two different WebRTC viewers, offsets measured -------------------------

def _skip_without_namespace() -> None:
    if not namespaces_work():
        pytest.skip("cannot create a network namespace here (unshare -n needs root or user namespaces)")


@functools.cache
def gst_audio_missing() -> str | None:
    """Why webrtcbin cannot take part here (its WebRTC stack, or the Opus and Matroska elements), else None."""
    reason = gst_webrtc_missing()
    if reason:
        return reason
    probe = ("import gi\ngi.require_version('Gst', '1.0')\nfrom gi.repository import Gst\nGst.init(None)\n"
             "missing = [e for e in ('rtpopusdepay', 'opusdec', 'opusparse', 'rtpopuspay', 'matroskademux', "
             "'audioconvert', 'audioresample', 'identity') if Gst.ElementFactory.find(e) is None]\n"
             "assert not missing, missing\n")
    result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    return None if result.returncode == 0 else f"GStreamer's Opus/Matroska elements missing: {result.stderr[-300:]}"


def _viewers() -> tuple[str, ...]:
    return ("aiortc",) if gst_audio_missing() else ("aiortc", "webrtcbin")


def _check_sync(results: dict, viewers: tuple[str, ...]) -> None:
    """Flash and click within one frame: the median event, and three in five at least. (This machine's two
    cores, shared by a dozen busy processes, stall one of the four processes for 50-300 ms now and then,
    and an event caught in a stall comes out that far off: in runs here 0-2 events in ten. Without the
    delay the sound comes 40-120 ms early on every event: the median fails.)"""
    for name in viewers:
        result = results[name]
        offsets = [abs(o) for o in result["offsets"]]
        shown = (name, [round(o * 1000, 1) for o in result["offsets"]])
        assert len(offsets) >= 4, (name, result)  # most flashes came through, each with its click
        assert statistics.median(offsets) <= FRAME, shown
        assert sum(o <= FRAME for o in offsets) >= 0.6 * len(offsets), shown


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.02])
def test_whip_to_whep_flash_and_click_within_a_frame(delay: float, tmp_path: Path) -> None:
    """The test model (instant, or 20 ms a frame: a known delay that keeps up with 30 fps): at the aiortc
    viewer and at webrtcbin, flash and click within one frame (see _check_sync)."""
    _skip_without_namespace()
    viewers = _viewers()
    results = measure_whip_to_whep(delay=delay, seconds=10, viewers=viewers, work=tmp_path)
    _check_sync(results, viewers)
    assert results["server"]["streamer_audio_delay_seconds"] >= delay


@pytest.mark.slow
def test_whip_to_whep_with_the_passthrough_preset_through_the_cli(tmp_path: Path) -> None:
    """The same through `python -m streamer serve --preset passthrough`."""
    _skip_without_namespace()
    viewers = _viewers()
    results = measure_whip_to_whep(preset="passthrough", seconds=10, viewers=viewers, work=tmp_path)
    _check_sync(results, viewers)


@pytest.mark.slow
def test_audio_stays_continuous_while_video_frames_are_dropped(tmp_path: Path) -> None:
    """A model at 0.12 s a frame drops most of 30 fps; no audio is missing: in the aiortc viewer's timeline
    (RTP timestamps) and in what webrtcbin plays (its timeline after its jitter buffer). The audio delay
    follows the video's. (Packets' arrival times at the aiortc viewer are reported, not checked: this loaded
    machine stalls a process for up to a second now and then; measured 12-90 ms in most runs.)"""
    _skip_without_namespace()
    viewers = _viewers()
    results = measure_whip_to_whep(delay=0.12, seconds=8, viewers=viewers, work=tmp_path)
    server = results["server"]
    assert server['streamer_frames_dropped_total{where="capture"}'] > 50, server
    assert server["streamer_audio_delay_seconds"] >= 0.12, server
    aiortc = results["aiortc"]
    assert aiortc["content_gap"] == 0.0 and aiortc["packets"] >= 300, aiortc
    print(f"longest pause between audio packets arriving at aiortc: {aiortc['arrival_gap'] * 1000:.0f} ms")
    if "webrtcbin" in results:
        assert results["webrtcbin"]["arrival_gap"] <= 1.5 * FRAME, results["webrtcbin"]  # measured 5-33 ms


@pytest.mark.slow
def test_webrtcbin_publishes_a_clip_with_its_sound(tmp_path: Path) -> None:
    """webrtcbin sends a clip's VP8 and Opus packets as they are, each at its time (as OBS sends its
    encoders' output); the aiortc viewer and a webrtcbin viewer get flash and click within a frame."""
    _skip_without_namespace()
    if gst_audio_missing():
        pytest.skip(gst_audio_missing())
    results = measure_whip_to_whep(delay=0.02, seconds=10, viewers=("aiortc", "webrtcbin"), publisher="webrtcbin",
                                   work=tmp_path)
    _check_sync(results, ("aiortc", "webrtcbin"))


@pytest.mark.slow
def test_a_real_model_preset_delays_audio_by_its_own_latency(tmp_path: Path) -> None:
    """`serve --preset analytic` (a real frame step, slower than real time on a CPU: most single-frame
    flashes never reach the output, so no offsets): no audio is missing and the delay applied follows the
    model's time."""
    _skip_without_namespace()
    results = measure_whip_to_whep(preset="analytic", server_args=["--resolution", "160x96"], seconds=8,
                                   work=tmp_path)
    server, aiortc = results["server"], results["aiortc"]
    # The delay applied is at least the model's own time (a frame also waits for the call before its own).
    model = server["streamer_model_seconds_sum"] / server["streamer_model_seconds_count"]
    assert server["streamer_audio_delay_seconds"] >= 0.5 * model, (model, server)
    assert aiortc["content_gap"] == 0.0 and aiortc["packets"] >= 250, aiortc


def test_the_audio_buffer_is_bounded_follows_the_video_slowly_and_survives_a_clock_restart() -> None:
    """AudioFeed on its own, fed real RTP packets: a flood keeps at most MAX_PACKETS; the applied delay
    starts at the video's and then moves at most SLEW per second of audio; a publisher whose timestamps
    restart keeps its sound going (pts still increasing)."""
    from aiortc.rtp import RtpPacket

    from streamer.server.audio import MAX_PACKETS, SLEW, AudioFeed

    async def scenario() -> None:
        video = [0.1]
        feed = AudioFeed(lambda: video[0], {111})
        now = 1000.0
        for i in range(3 * MAX_PACKETS):
            feed.put(RtpPacket(payload_type=111, timestamp=(4_000_000_000 + 960 * i) % 2**32, payload=b"x"),
                     now + i * 0.001)  # a flood: 1000 packets a second, across the timestamp wrap
        assert len(feed.packets) == MAX_PACKETS
        assert feed.delay == pytest.approx(0.1)
        video[0] = 0.5  # the video's delay jumps: the audio's follows at SLEW
        start, last = feed.delay, feed.packets[-1][1]
        for i in range(50):
            feed.put(RtpPacket(payload_type=111, timestamp=960 * i, payload=b"y"), now + 3.0 + 0.02 * (i + 1))
        assert feed.delay == pytest.approx(start + 50 * 0.02 * SLEW, abs=0.002)
        assert feed.packets[-1][1] == last + 50 * 960  # restarted timestamps: the timeline goes on
        feed.put(RtpPacket(payload_type=0, timestamp=960 * 60, payload=b"z"), now + 5.0)  # not Opus: ignored
        assert feed.packets[-1][2] == b"y"

    asyncio.run(scenario())
