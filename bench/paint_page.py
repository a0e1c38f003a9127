"""The mask painter's weight (HTML + JS + CSS) and its time to interactive in headless Chromium (SPEC 12)."""

from __future__ import annotations

import asyncio
import gzip
import importlib.resources
import io
import secrets
import statistics
import tempfile

from PIL import Image, ImageDraw
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from bench.rig import Figure, report
from bot.config import WebSettings
from bot.errors import InputError
from bot.paint_links import PaintGrant, PaintLinks
from bot.web import PaintServer
from tests.test_paint_browser import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS, free_port

PAGE_FILES = ("paint.html", "paint.js", "paint.css")
JOB = "0123456789abcdef0123456789abcdef"
RUNS = 7


class BenchJobs:
    """A PaintJobs that serves one image and takes no mask."""

    def __init__(self, image: bytes, content_type: str) -> None:
        self.found = (image, content_type)

    async def image(self, grant: PaintGrant) -> tuple[bytes, str] | None:
        return self.found

    async def submit_mask(self, grant: PaintGrant, png: bytes) -> str:
        raise InputError("The benchmark takes no masks.")


def photo(size: tuple[int, int], fmt: str) -> bytes:
    im = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(im)
    for n in range(0, size[0], max(1, size[0] // 12)):
        draw.ellipse((n, n * size[1] // size[0], n + size[0] // 10, n * size[1] // size[0] + size[0] // 10), "red")
    out = io.BytesIO()
    im.save(out, fmt, quality=88)
    return out.getvalue()


def weight() -> tuple[int, int]:
    """Bytes of the page's three files, as served and gzipped."""
    static = importlib.resources.files("bot") / "static"
    bodies = [(static / name).read_bytes() for name in PAGE_FILES]
    return sum(map(len, bodies)), sum(len(gzip.compress(body, 9)) for body in bodies)


def browser(profile: str) -> WebDriver:
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def time_to_interactive(driver: WebDriver, url: str, runs: int) -> list[float]:
    """ms from navigation start to ``window.paintReady`` (the image drawn, the tools enabled), per run."""
    times = []
    for _ in range(runs):
        driver.get("about:blank")
        driver.get(url)
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return window.paintReady === true"))
        times.append(float(driver.execute_script("return window.paintReadyAt")))
    return times


async def measure(driver: WebDriver, image: bytes, content_type: str, runs: int) -> list[float]:
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    settings = WebSettings(enabled=True, listen=f"127.0.0.1:{port}", public_url=public_url)
    links = PaintLinks(secrets.token_bytes(32), ttl_s=900, public_url=public_url)
    async with PaintServer(settings, links, BenchJobs(image, content_type)):
        return await asyncio.to_thread(time_to_interactive, driver, links.link(JOB, 1), runs)


async def run(runs: int = RUNS) -> list[Figure]:
    plain, zipped = weight()
    figures = [Figure("page weight (HTML + JS + CSS)", f"{plain:,} B ({zipped:,} B gzipped)")]
    images = [
        ("640×480 PNG", photo((640, 480), "PNG"), "image/png"),
        ("12 MP JPEG", photo((4000, 3000), "JPEG"), "image/jpeg"),
    ]
    with tempfile.TemporaryDirectory() as profile:
        driver = await asyncio.to_thread(browser, profile)
        try:
            for label, image, content_type in images:
                times = await measure(driver, image, content_type, runs)
                figures.append(
                    Figure(
                        f"time to interactive, {label} ({len(image) // 1024:,} KiB), median of {runs}",
                        f"{statistics.median(times):.0f} ms (min {min(times):.0f}, max {max(times):.0f})",
                    )
                )
        finally:
            await asyncio.to_thread(driver.quit)
    return figures


if __name__ == "__main__":
    report("Mask painter page", asyncio.run(run()), "baseline (none)")
