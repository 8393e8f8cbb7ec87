"""Make docs/page.png: the camera page in a real Chromium, stylizing a real photo with the `analytic` preset.

    python docs/page_screenshot.py [OUT.png]

Runs `python -m streamer serve --preset analytic` and Chromium in a loopback-only network namespace (the
browser test's set-up, tests/test_browser.py), with a slow zoom into matplotlib's sample portrait of
Grace Hopper (public domain, shipped in matplotlib's sample data) as the camera. No download, CPU only.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_browser import PORT, launch, open_page, server_in_namespace  # noqa: E402

PORTRAIT = "grace_hopper.jpg"


def portrait_clip(path: Path, width: int = 640, height: int = 480, frames: int = 90) -> Path:
    """A y4m clip (I420) for Chromium's fake camera: the portrait, cropped to 4:3, zooming in slowly."""
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data(PORTRAIT) as f:
        image = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
    h, w = image.shape[:2]
    crop_h = w * height // width
    image = image[(h - crop_h) // 3:(h - crop_h) // 3 + crop_h]
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            zoom = 1.0 + 0.06 * i / frames
            matrix = cv2.getRotationMatrix2D((image.shape[1] / 2, image.shape[0] / 2), 0, zoom)
            frame = cv2.resize(cv2.warpAffine(image, matrix, image.shape[1::-1], borderMode=cv2.BORDER_REFLECT),
                               (width, height), interpolation=cv2.INTER_AREA)
            out.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


async def shoot(wrapper: Path, clip: Path, out: Path) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await launch(playwright, wrapper, "--use-fake-device-for-media-stream",
                               f"--use-file-for-fake-video-capture={clip}")
        try:
            page = await open_page(browser, f"http://127.0.0.1:{PORT}/", viewport=(1280, 820))
            page.set_default_timeout(60_000)
            await page.click("text=an oil painting, vivid colours, thick brush strokes")
            await page.click("#start")
            await page.wait_for_function("window.streamer.connectionState === 'connected'")
            await page.wait_for_function("/^[0-9.]+$/.test(document.getElementById('recv-fps').textContent)")
            await asyncio.sleep(4)  # let the numbers settle
            await page.locator("#prompt").blur()
            await page.evaluate("window.scrollTo(0, 0)")
            await page.screenshot(path=str(out), full_page=True)
            await page.click("#stop")
        finally:
            await asyncio.wait_for(browser.close(), 15)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "page.png"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        clip = portrait_clip(tmp_path / "camera.y4m")
        command = [sys.executable, "-m", "streamer", "serve", "--preset", "analytic", "--resolution", "512x384",
                   "--port", str(PORT)]
        partial = out.with_name(out.name + ".partial.png")
        with server_in_namespace(tmp_path, command) as wrapper:
            asyncio.run(asyncio.wait_for(shoot(wrapper, clip, partial), 180))
        partial.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
