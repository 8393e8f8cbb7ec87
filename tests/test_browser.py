"""A real headless Chromium opens the camera page, streams a chosen clip as its camera, and gets the
stylized video back; a prompt typed into the page takes effect; the camera and resolution pickers, mirror,
full-window view, example prompts, keyboard use and the camera error messages work.

Chromium and the server run in a network namespace of their own (``unshare -n``: only loopback there),
so WebRTC's candidates are loopback addresses and nothing else on the machine is reached. Chromium
joins the server's namespace through a small wrapper (``nsenter``); Playwright drives it over a pipe, so
the test itself stays outside. The server runs ``run_server`` with the inverting test pipeline, whose
effect (and a prompt's) is unmistakable after video compression.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import start_streamer
from tests.webrtc_helpers import BRIGHT, DARK, write_y4m

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
PORT = 8080  # the namespace is fresh: every port is free
TOKEN = "browser-test-token"
# The camera permission is granted per browser context (``grant_permissions``), so a context without it
# sees the camera refused, as a user who clicked "Block" would.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu",
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
    """A process of the group still runs (an exited child not yet reaped, a zombie, does not count)."""
    result = subprocess.run(["pgrep", "-g", str(pgid), "--runstates", "D,R,S,T,t"], capture_output=True,
                            timeout=10)
    return result.returncode == 0



@contextlib.contextmanager
def server_in_namespace(tmp_path: Path, command: list[str] | None = None) -> Iterator[Path]:
    """The test server (or ``command``, a server on port PORT) in a loopback-only namespace of its own;
    yields a Chromium wrapper that joins it. On exit every Chromium started through the wrapper and the
    server are stopped (and checked gone)."""
    if not namespaces_work():
        pytest.skip("cannot create a network namespace here (unshare -n needs root or user namespaces)")
    setup = "ip link set lo up && ip addr add 127.0.0.2/8 dev lo && exec \"$0\" \"$@\""
    served = start_streamer([], tmp_path / "server.log", "serving on", timeout=120, cwd=ROOT,
                            program=command or [sys.executable, str(ROOT / "tests" / "webrtc_helpers.py"), "serve",
                                                "--port", str(PORT), "--token", TOKEN],
                            prefix=["unshare", "-n", "--", "sh", "-c", setup])
    server = served.process
    browser_pids = tmp_path / "browser.pids"
    wrapper = tmp_path / "chromium-in-namespace"
    wrapper.write_text(f"#!/bin/sh\necho $$ >> {browser_pids}\n"
                       f"exec nsenter --net=/proc/{server.pid}/ns/net {CHROMIUM} \"$@\"\n")
    wrapper.chmod(0o755)
    try:
        try:
            yield wrapper
        finally:
            for pid in (int(line) for line in browser_pids.read_text().split()) if browser_pids.exists() else ():
                stop_process_group(pid)  # a no-op once Playwright closed it; the cure if close hung
                assert not group_alive(pid), "Chromium processes survived the test"
    finally:
        code = served.stop()
    assert code == 0 and "shutting down" in served.text(), served.text()


async def launch(playwright, wrapper: Path, *flags: str):
    return await asyncio.wait_for(playwright.chromium.launch(
        executable_path=str(wrapper), args=[*CHROMIUM_FLAGS, *flags], timeout=30_000, handle_sigint=False,
        handle_sigterm=False, handle_sighup=False), 40)


async def open_page(browser, url: str = f"http://127.0.0.1:{PORT}/?token={TOKEN}", camera: bool = True,
                    viewport: tuple[int, int] = (1280, 800)):
    context = await browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    if camera:
        await context.grant_permissions(["camera"], origin=f"http://127.0.0.1:{PORT}")
    page = await context.new_page()
    page.set_default_timeout(20_000)
    await page.goto(url)
    return page


def remote_matches(condition: str) -> str:
    return f"(() => {{ const s = ({SAMPLE_JS})('remote'); return s && {condition}; }})()"


SENT_SETTINGS = "window.streamer.pc.getSenders().find(s => s.track).track.getSettings()"
SESSIONS_EMPTY = ("fetch('/sessions', {headers: {Authorization: 'Bearer " + TOKEN + "'}})"
                  ".then(r => r.json()).then(j => j.sessions.length === 0)")


def test_browser_page_streams_camera_and_applies_prompt(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    clip = write_y4m(tmp_path / "camera.y4m", 640, 480, frames=30)
    screenshot = tmp_path / "page.png"

    async def scenario(wrapper: Path) -> None:
        async with async_playwright() as playwright:
            browser = await launch(playwright, wrapper, "--use-fake-device-for-media-stream",
                                   f"--use-file-for-fake-video-capture={clip}")
            try:
                page = await open_page(browser)
                # Before anything runs: says so, no numbers without values.
                assert await page.text_content("#status") == "not running"
                assert await page.is_hidden("#numbers") and await page.text_content("#error") == ""
                # Every control is reached with Tab, in reading order (Stop is disabled until Start).
                reached = []
                for _ in range(16):
                    await page.keyboard.press("Tab")
                    reached.append(await page.evaluate(
                        "document.activeElement.id || document.activeElement.textContent.trim()"))
                assert reached[:7] == ["start", "camera", "resolution", "microphone", "mirror", "fullwindow",
                                       "prompt"], reached
                assert reached[7:14] == ["apply", "an oil painting, vivid colours, thick brush strokes",
                                         "a watercolour sketch, soft pastel colours", "a red ink drawing on rice paper",
                                         "a pencil drawing, cross-hatching", "a stained glass window", "strength"]
                assert reached[14:16] == ["seed", "smoothing"], reached
                for control in ("camera", "resolution", "microphone", "prompt", "strength", "seed", "smoothing",
                                "mirror"):
                    assert await page.evaluate(f"document.getElementById('{control}').labels.length") == 1, control

                # The resolution chosen before Start is what is sent (the clip is 640x480: scaled down).
                await page.select_option("#resolution", "320x240")
                await page.click("#start")
                await page.wait_for_function("window.streamer.connectionState === 'connected'")
                assert await page.text_content("#status") == "running"
                await page.wait_for_function(remote_matches("s.left[0] < 90 && s.right[0] > 160"))
                camera = await page.evaluate(SAMPLE_JS, "local")
                stylized = await page.evaluate(SAMPLE_JS, "remote")
                # The camera shows the clip (bright left); what came back is its inversion.
                assert camera["left"][0] > BRIGHT - 30 and camera["right"][0] < DARK + 30, camera
                assert stylized["left"][0] < 255 - BRIGHT + 30 and stylized["right"][0] > 255 - DARK - 30
                assert (stylized["width"], stylized["height"]) == (320, 240)
                assert await page.evaluate(f"{SENT_SETTINGS}.width") == 320
                assert await page.text_content("#sent-size") == "sending 320 × 240"
                # The picker lists the fake camera by its name (the clip's path), selected.
                assert await page.evaluate("[...document.getElementById('camera').options].map(o => o.text)") == [
                    str(clip)]
                # A new resolution while running: the sent track and what the server sends back change size.
                await page.select_option("#resolution", "640x480")
                await page.wait_for_function("document.getElementById('remote').videoWidth === 640")
                assert await page.evaluate(f"[{SENT_SETTINGS}.width, {SENT_SETTINGS}.height]") == [640, 480]
                await page.wait_for_function("document.getElementById('sent-size').textContent === 'sending 640 × 480'")

                # An example prompt fills the prompt and applies it: "red" keeps only the red channel.
                await page.click("text=a red ink drawing on rice paper")
                assert await page.input_value("#prompt") == "a red ink drawing on rice paper"
                await page.wait_for_function(remote_matches("s.right[1] < 60 && s.right[0] > 160"))
                await page.wait_for_function("window.streamer.lastReply && window.streamer.lastReply.ok")
                # A typed prompt applied with Enter: colour comes back.
                await page.fill("#prompt", "a pencil drawing")
                await page.press("#prompt", "Enter")
                await page.wait_for_function(remote_matches("s.right[1] > 160 && s.right[0] > 160"))

                # The readout: labelled numbers from the server and from the browser's own statistics.
                await page.wait_for_function("/^[0-9.]+$/.test(document.getElementById('fps').textContent)")
                await page.wait_for_function("/^[0-9.]+$/.test(document.getElementById('recv-fps').textContent)")
                labels = await page.evaluate(
                    "[...document.querySelectorAll('#numbers .label')].map(e => e.textContent)")
                assert labels == ["model fps", "server latency (ms)", "received fps"]
                fps = float(await page.text_content("#fps"))
                latency = float(await page.text_content("#latency"))
                print(f"browser session: {fps:.1f} fps, {latency:.0f} ms server latency")
                # What they measure: frames the model returned per second, bounded by the fake camera's 30 fps
                # (a wrong unit, e.g. per millisecond or a frame count, falls outside), and a real round trip.
                assert 0.5 <= fps <= 35, fps
                assert 0 < latency < 5000, latency

                # Mirror: "m" and the checkbox flip both videos (display only).
                transform = "getComputedStyle(document.getElementById('{}')).transform"
                assert await page.evaluate(transform.format("remote")) == "none"
                await page.focus("#fullwindow")
                await page.keyboard.press("m")
                assert await page.is_checked("#mirror")
                for video in ("remote", "local"):
                    assert await page.evaluate(transform.format(video)) == "matrix(-1, 0, 0, 1, 0, 0)"
                await page.fill("#prompt", "mm")  # typing an "m" in the prompt is not a shortcut
                assert await page.is_checked("#mirror")
                await page.click("#mirror")
                assert await page.evaluate(transform.format("remote")) == "none"

                # Full window: "f", the button and Esc; the stylized video covers the whole viewport.
                box = "(() => { const r = document.getElementById('remote').getBoundingClientRect(); " \
                      "return [r.left, r.top, r.width, r.height]; })()"
                full = "document.getElementById('output').classList.contains('full-window')"
                small = await page.evaluate(box)
                await page.focus("#fullwindow")
                await page.keyboard.press("f")
                assert await page.evaluate(full)
                await page.wait_for_function(f"JSON.stringify({box}) === JSON.stringify([0, 0, innerWidth, innerHeight])")
                assert await page.get_attribute("#fullwindow", "aria-pressed") == "true"
                await page.keyboard.press("f")
                await page.wait_for_function(f"!{full}")
                await page.wait_for_function(f"JSON.stringify({box}) === JSON.stringify({small})")
                await page.click("#fullwindow")
                assert await page.evaluate(full)
                await page.keyboard.press("Escape")
                await page.wait_for_function(f"!{full}")
                assert await page.get_attribute("#fullwindow", "aria-pressed") == "false"

                await page.click("text=an oil painting, vivid colours, thick brush strokes")
                await page.wait_for_function(remote_matches("s.right[1] > 160"))
                await page.locator("#prompt").blur()
                await page.evaluate("window.scrollTo(0, 0)")
                await page.screenshot(path=str(screenshot), full_page=True)  # renders (docs/page_screenshot.py)
                # Stop: the page ends its session and says it is not running.
                await page.click("#stop")
                await page.wait_for_function(SESSIONS_EMPTY, polling=200)
                assert await page.text_content("#status") == "not running"
                assert await page.is_hidden("#numbers")
            finally:
                await asyncio.wait_for(browser.close(), 15)

    with server_in_namespace(tmp_path) as wrapper:
        asyncio.run(asyncio.wait_for(scenario(wrapper), 150))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_browser_page_camera_picker_and_camera_errors(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    async def scenario(wrapper: Path) -> None:
        async with async_playwright() as playwright:
            browser = await launch(playwright, wrapper, "--use-fake-device-for-media-stream=device-count=3")
            try:
                # Camera refused (the user blocked it): one line saying so, ready to try again.
                page = await open_page(browser, camera=False)
                await page.click("#start")
                await page.wait_for_function("document.getElementById('error').textContent !== ''")
                assert await page.text_content("#error") == (
                    "The camera was refused: allow it for this site (the camera icon in the address bar), "
                    "then press Start again.")
                assert await page.text_content("#status") == "not running" and await page.is_enabled("#start")
                await page.context.close()

                # Three cameras: all listed; the one picked is sent; another picked while running replaces it.
                page = await open_page(browser)
                await page.wait_for_function("document.getElementById('camera').options.length === 3")
                options = await page.evaluate(
                    "[...document.getElementById('camera').options].map(o => [o.text, o.value])")
                assert [text for text, _ in options] == ["fake_device_0", "fake_device_1", "fake_device_2"]
                ids = dict(options)
                # (fake_device_1 imitates a depth camera, Y16, which Chromium does not encode: left out.)
                await page.select_option("#camera", label="fake_device_2")
                # A prompt applied before Start goes with the offer: "red" keeps only the red channel.
                await page.click("text=a red ink drawing on rice paper")
                await page.click("#start")
                await page.wait_for_function("window.streamer.connectionState === 'connected'")
                assert await page.evaluate(f"{SENT_SETTINGS}.deviceId") == ids["fake_device_2"]
                await page.wait_for_function(remote_matches("s.left[1] < 30 && s.right[1] < 30"))
                await page.select_option("#camera", label="fake_device_0")
                await page.wait_for_function(f"{SENT_SETTINGS}.deviceId === '{ids['fake_device_0']}'")
                assert await page.evaluate("document.getElementById('local').srcObject.getVideoTracks()[0]"
                                           ".getSettings().deviceId") == ids["fake_device_0"]
                # A camera unplugged after the list was made: the switch fails, the running camera and the
                # picker stay as they were.
                await page.evaluate("document.getElementById('camera').add(new Option('unplugged', 'gone'))")
                await page.select_option("#camera", label="unplugged")
                await page.wait_for_function("document.getElementById('error').textContent !== ''")
                assert await page.text_content("#error") == (
                    "The chosen camera is not available any more: pick another one.")
                assert await page.input_value("#camera") == ids["fake_device_0"]
                assert await page.evaluate(f"{SENT_SETTINGS}.deviceId") == ids["fake_device_0"]
                frames = await page.evaluate("document.getElementById('remote').getVideoPlaybackQuality()"
                                             ".totalVideoFrames")
                await page.wait_for_function("document.getElementById('remote').getVideoPlaybackQuality()"
                                             f".totalVideoFrames > {frames + 5}")  # still stylizing
                await page.click("#stop")
                await page.wait_for_function(SESSIONS_EMPTY, polling=200)
                await page.context.close()

                # Not a secure context (a plain http:// name that is not localhost): the camera cannot work,
                # the page says what to do instead. The page and its script still come from the real server,
                # fetched by a page on it (Playwright's own fetch runs outside the namespace).
                on_server = await open_page(browser, camera=False)
                context = await browser.new_context()

                async def from_server(route) -> None:
                    path = route.request.url.removeprefix("http://streamer.test")
                    status, content_type, body = await on_server.evaluate(
                        "async (path) => { const r = await fetch(path); "
                        "return [r.status, r.headers.get('Content-Type'), await r.text()]; }", path)
                    await route.fulfill(status=status, content_type=content_type, body=body)

                await context.route("http://streamer.test/**", from_server)
                page = await context.new_page()
                await page.goto("http://streamer.test/")
                assert not await page.evaluate("window.isSecureContext")
                assert await page.text_content("#error") == (
                    "The camera only works on a secure page: open this page over https:// (serve with --cert and "
                    "--key) or as http://localhost:80/ on this machine; http://streamer.test is neither.")
                assert await page.is_disabled("#start")
                await context.close()
            finally:
                await asyncio.wait_for(browser.close(), 15)
            # No camera at all.
            browser = await launch(playwright, wrapper, "--use-fake-device-for-media-stream=device-count=0")
            try:
                page = await open_page(browser)
                await page.click("#start")
                await page.wait_for_function("document.getElementById('error').textContent !== ''")
                assert await page.text_content("#error") == (
                    "No camera found: connect one or start a virtual camera, then press Start again.")
                assert await page.text_content("#status") == "not running"
            finally:
                await asyncio.wait_for(browser.close(), 15)

    with server_in_namespace(tmp_path) as wrapper:
        asyncio.run(asyncio.wait_for(scenario(wrapper), 150))


def test_browser_page_style_image_reaches_the_session(tmp_path: Path) -> None:
    """`streamer serve` with an IP-Adapter model: the page shows its style controls; a picture picked before
    Start is sent once the session exists, a dropped one replaces it live; the server's replies name them."""
    import io

    import yaml
    from PIL import Image
    from playwright.async_api import async_playwright

    from pipelines.conditioning.tiny_ip_adapter import save_tiny_ip_adapter, tiny_ip_adapter_config
    from pipelines.tiny import tiny_components

    adapter = tiny_ip_adapter_config(save_tiny_ip_adapter(tmp_path / "ipa", tiny_components("lcm")["unet"]))
    config = tmp_path / "styled.yaml"
    config.write_text(yaml.safe_dump({"pipeline": {"preset": "tiny", "ip_adapter": adapter}}))
    picked = tmp_path / "painting.png"
    Image.new("RGB", (1000, 600), (200, 40, 40)).save(picked)
    clip = write_y4m(tmp_path / "camera.y4m", 320, 240, frames=30)
    command = [sys.executable, "-m", "streamer", "serve", "--config", str(config), "--port", str(PORT),
               "--token", TOKEN, "--device", "cpu"]
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 20, 220)).save(buf, "PNG")
    dropped = list(buf.getvalue())
    label = "window.streamer.lastReply && window.streamer.lastReply.ok && window.streamer.lastReply.params.style_image"

    async def scenario(wrapper: Path) -> None:
        async with async_playwright() as playwright:
            browser = await launch(playwright, wrapper, "--use-fake-device-for-media-stream",
                                   f"--use-file-for-fake-video-capture={clip}")
            try:
                page = await open_page(browser)
                await page.wait_for_selector("#style-row", state="visible")
                assert await page.input_value("#style-scale") == "0.6"  # the preset's, from the server
                await page.set_input_files("#style-file", str(picked))
                await page.wait_for_function("!document.getElementById('style-preview').hidden")
                await page.click("#start")
                await page.wait_for_function("window.streamer.connectionState === 'connected'")
                # Scaled to 512 px on the page, then sent: the server names what it got.
                await page.wait_for_function(f"({label} || '').startsWith('512x307 sha256:')")
                # A dropped picture replaces it, live.
                await page.evaluate("""(bytes) => {
                  const file = new File([new Uint8Array(bytes)], "blue.png", {type: "image/png"});
                  const data = new DataTransfer(); data.items.add(file);
                  document.getElementById('style-drop').dispatchEvent(
                    new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
                }""", dropped)
                await page.wait_for_function(f"({label} || '').startsWith('64x48 sha256:')")
                assert await page.text_content("#style-name") == "blue.png"
                # Not a picture: the page says so in one line and sends nothing.
                await page.set_input_files("#style-file", {"name": "notes.txt", "mimeType": "text/plain",
                                                           "buffer": b"hello"})
                await page.wait_for_function("document.getElementById('error').textContent.includes('not a picture')")
                await page.click("#style-clear")
                await page.wait_for_function("window.streamer.lastReply.ok && "
                                             "window.streamer.lastReply.params.style_image === null")
                await page.click("#stop")
                await page.wait_for_function(SESSIONS_EMPTY, polling=200)
            finally:
                await asyncio.wait_for(browser.close(), 15)

    with server_in_namespace(tmp_path, command) as wrapper:
        asyncio.run(asyncio.wait_for(scenario(wrapper), 180))


SESSIONS = "fetch('/sessions', {headers: {Authorization: 'Bearer " + TOKEN + "'}}).then(r => r.json())"
AUDIO_RECEIVED = ("window.streamer.pc.getStats().then(r => { let n = 0; r.forEach(e => { "
                  "if (e.type === 'inbound-rtp' && e.kind === 'audio') n = e.packetsReceived; }); return n; })")


def test_browser_page_sends_its_microphone_only_when_ticked(tmp_path: Path) -> None:
    """Off by default: only the camera goes out. Ticked: Chromium's (fake) microphone goes to the server as
    Opus and comes back with the stylized video, delayed as the video is, and plays (unmuted)."""
    from playwright.async_api import async_playwright

    clip = write_y4m(tmp_path / "camera.y4m", 320, 240, frames=30)

    async def scenario(wrapper: Path) -> None:
        async with async_playwright() as playwright:
            browser = await launch(playwright, wrapper, "--use-fake-device-for-media-stream",
                                   f"--use-file-for-fake-video-capture={clip}")
            try:
                context = await browser.new_context()
                await context.grant_permissions(["camera", "microphone"], origin=f"http://127.0.0.1:{PORT}")
                page = await context.new_page()
                page.set_default_timeout(20_000)
                await page.goto(f"http://127.0.0.1:{PORT}/?token={TOKEN}")
                assert not await page.is_checked("#microphone")
                await page.click("#start")
                await page.wait_for_function("window.streamer.connectionState === 'connected'")
                assert await page.evaluate("window.streamer.pc.getSenders().map(s => s.track && s.track.kind)") \
                    == ["video"]
                await page.wait_for_function(remote_matches("s.left[0] < 90"))
                session = (await page.evaluate(SESSIONS))["sessions"][0]
                assert session["audio_in"] == 0 and session["audio_out"] == 0, session
                await page.click("#stop")
                await page.wait_for_function(SESSIONS_EMPTY, polling=200)

                await page.check("#microphone")
                await page.click("#start")
                await page.wait_for_function("(window.streamer.pc && window.streamer.pc.connectionState === "
                                             "'connected') || document.getElementById('error').textContent")
                assert await page.text_content("#error") == ""
                kinds = await page.evaluate("window.streamer.pc.getSenders().map(s => s.track && s.track.kind)")
                assert sorted(kinds) == ["audio", "video"], kinds
                deadline = time.monotonic() + 20
                while await page.evaluate(AUDIO_RECEIVED) <= 50:  # the sound came back (its packets counted)
                    assert time.monotonic() < deadline, await page.evaluate(SESSIONS)
                    await asyncio.sleep(0.5)
                assert await page.evaluate("document.getElementById('remote').srcObject.getAudioTracks().length") == 1
                assert await page.evaluate("document.getElementById('remote').muted") is False
                session = (await page.evaluate(SESSIONS))["sessions"][0]
                assert session["audio_in"] > 50 and session["audio_out"] > 50, str(session)
                assert session["audio_delay_ms"] > 0, session
                await page.click("#stop")
                await page.wait_for_function(SESSIONS_EMPTY, polling=200)
            finally:
                await asyncio.wait_for(browser.close(), 15)

    with server_in_namespace(tmp_path) as wrapper:
        asyncio.run(asyncio.wait_for(scenario(wrapper), 120))
