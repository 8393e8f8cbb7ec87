"""A real headless Chromium opens the camera page, streams a chosen clip as its camera, and gets the
stylized video back; a prompt typed into the page takes effect.

Chromium and the server run in a network namespace of their own (``unshare -n``: only loopback there),
so WebRTC's candidates are loopback addresses and nothing else on the machine is reached. Chromium
joins the server's namespace through a small wrapper (``nsenter``); Playwright drives it over a pipe, so
the test itself stays outside. The server runs ``run_server`` with the inverting test pipeline, whose
effect (and a prompt's) is unmistakable after video compression.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.webrtc_helpers import BRIGHT, DARK, write_y4m

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
PORT = 8080  # the namespace is fresh: every port is free
TOKEN = "browser-test-token"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-quic",
]
# Mean RGB of the left and right halves (margins left out) of a <video>, drawn on a canvas.
SAMPLE_JS = """(id) => {
  const video = document.getElementById(id);
  if (!video || video.videoWidth === 0) return null;
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(video, 0, 0);
  const w = canvas.width, h = canvas.height, m = Math.floor(w / 16);
  const mean = (x0, x1) => {
    const d = ctx.getImageData(x0, 0, x1 - x0, h).data; const s = [0, 0, 0];
    for (let i = 0; i < d.length; i += 4) { s[0] += d[i]; s[1] += d[i + 1]; s[2] += d[i + 2]; }
    const n = d.length / 4; return s.map((v) => v / n);
  };
  return { left: mean(0, w / 2 - m), right: mean(w / 2 + m, w), width: w, height: h };
}"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (/usr/bin/chromium)"),
]


def namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def stop_process_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the group, then SIGKILL whatever is left; returns once none of it is alive."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not group_alive(pid):
                return
            time.sleep(0.1)


def group_alive(pgid: int) -> bool:
    result = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, timeout=10)
    return result.returncode == 0


def test_browser_page_streams_camera_and_applies_prompt(tmp_path: Path) -> None:
    if not namespaces_work():
        pytest.skip("cannot create a network namespace here (unshare -n needs root or user namespaces)")
    from playwright.async_api import async_playwright

    clip = write_y4m(tmp_path / "camera.y4m", 320, 240, frames=30)
    log = tmp_path / "server.log"
    setup = "ip link set lo up && ip addr add 127.0.0.2/8 dev lo && exec \"$0\" \"$@\""
    with open(log, "wb") as err:
        server = subprocess.Popen(
            ["unshare", "-n", "--", "sh", "-c", setup, sys.executable, str(ROOT / "tests" / "webrtc_helpers.py"),
             "serve", "--port", str(PORT), "--token", TOKEN],
            stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT, start_new_session=True)
    browser_pid_file = tmp_path / "browser.pid"
    wrapper = tmp_path / "chromium-in-namespace"
    wrapper.write_text(f"#!/bin/sh\necho $$ > {browser_pid_file}\n"
                       f"exec nsenter --net=/proc/{server.pid}/ns/net {CHROMIUM} \"$@\"\n")
    wrapper.chmod(0o755)
    try:
        deadline = time.monotonic() + 30
        while "serving on" not in log.read_text():
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

        async def scenario() -> None:
            async with async_playwright() as playwright:
                browser = await asyncio.wait_for(playwright.chromium.launch(
                    executable_path=str(wrapper), args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={clip}"],
                    timeout=30_000, handle_sigint=False, handle_sigterm=False, handle_sighup=False), 40)
                try:
                    page = await browser.new_page()
                    page.set_default_timeout(20_000)
                    await page.goto(f"http://127.0.0.1:{PORT}/?token={TOKEN}")
                    await page.click("#start")
                    await page.wait_for_function("window.streamer.connectionState === 'connected'")
                    await page.wait_for_function(f"(() => {{ const s = ({SAMPLE_JS})('remote'); "
                                                 f"return s && s.left[0] < 90 && s.right[0] > 160; }})()")
                    camera = await page.evaluate(SAMPLE_JS, "local")
                    stylized = await page.evaluate(SAMPLE_JS, "remote")
                    # The camera shows the clip (bright left); what came back is its inversion.
                    assert camera["left"][0] > BRIGHT - 30 and camera["right"][0] < DARK + 30, camera
                    assert stylized["left"][0] < 255 - BRIGHT + 30 and stylized["right"][0] > 255 - DARK - 30
                    assert (stylized["width"], stylized["height"]) == (320, 240)

                    # A prompt typed into the page: "red" keeps only the red channel.
                    await page.fill("#prompt", "a red ink drawing")
                    await page.click("#apply")
                    await page.wait_for_function(f"(() => {{ const s = ({SAMPLE_JS})('remote'); "
                                                 f"return s && s.right[1] < 60 && s.right[0] > 160; }})()")
                    await page.wait_for_function("window.streamer.lastReply && window.streamer.lastReply.ok")
                    # The readout shows the server's frame rate and latency.
                    await page.wait_for_function("/^[0-9.]+$/.test(document.getElementById('fps').textContent)")
                    fps = float(await page.text_content("#fps"))
                    latency = float(await page.text_content("#latency"))
                    print(f"browser session: {fps:.1f} fps, {latency:.0f} ms server latency")
                    assert fps > 0
                    # Stop: the page ends its session.
                    await page.click("#stop")
                    await page.wait_for_function(
                        "fetch('/sessions', {headers: {Authorization: 'Bearer " + TOKEN + "'}})"
                        ".then(r => r.json()).then(j => j.sessions.length === 0)", polling=200)
                finally:
                    await asyncio.wait_for(browser.close(), 15)

        try:
            asyncio.run(asyncio.wait_for(scenario(), 90))
        finally:
            if browser_pid_file.exists():
                pid = int(browser_pid_file.read_text())
                stop_process_group(pid)  # a no-op once Playwright closed it; the cure if close hung
                assert not group_alive(pid), "Chromium processes survived the test"
    finally:
        stop_process_group(server.pid)
        server.wait(timeout=10)
    assert server.returncode == 0 and "shutting down" in log.read_text(), log.read_text()
