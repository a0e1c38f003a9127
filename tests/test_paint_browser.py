"""The mask painter in a real headless Chromium: strokes by mouse and touch, undo, invert, zoom and the PNG sent."""

from __future__ import annotations

import asyncio
import io
import secrets
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions import interaction
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.actions.pointer_actions import PointerActions
from selenium.webdriver.common.actions.pointer_input import PointerInput
from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from bot.config import WebSettings
from bot.decode import mask_repaint
from bot.errors import InputError
from bot.paint_links import PaintGrant, PaintLinks, UsedLinkError
from bot.web import PaintServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # without these Chromium keeps calling home on a closed network
    "--disable-component-update",
    "--disable-sync",
    "--window-size=900,900",
    "--force-device-scale-factor=1",
)
WAIT_S = 20
JOB = "feedfacefeedfacefeedfacefeedface"
MEMBER = 42
SIZE = (640, 480)
BACKGROUND = (40, 120, 200)
RECEIVED = "Mask received: the job continues in #general. Look in the channel."

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="the painter's browser tests need /usr/bin/chromium and /usr/bin/chromedriver "
    "(Debian: apt-get install chromium chromium-driver)",
)


def make_image() -> bytes:
    im = Image.new("RGB", SIZE, BACKGROUND)
    ImageDraw.Draw(im).rectangle((520, 20, 620, 100), fill=(230, 200, 40))  # something to see, far from the strokes
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


@dataclass
class BrowserJobs:
    """A PaintJobs with one job that waits for a mask; it keeps the masks it took."""

    image_bytes: bytes = field(default_factory=make_image)
    waiting: bool = True
    refuse: str | None = None
    masks: list[bytes] = field(default_factory=list)

    async def image(self, grant: PaintGrant) -> tuple[bytes, str] | None:
        return (self.image_bytes, "image/png") if self.waiting else None

    async def submit_mask(self, grant: PaintGrant, png: bytes) -> str:
        if not self.waiting:
            raise UsedLinkError()
        if self.refuse is not None:
            raise InputError(self.refuse)
        self.waiting = False
        self.masks.append(png)
        return RECEIVED


@dataclass
class Painter:
    url: str
    jobs: BrowserJobs


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def painter() -> AsyncIterator[Painter]:
    port = free_port()
    settings = WebSettings(enabled=True, listen=f"127.0.0.1:{port}", public_url=f"http://127.0.0.1:{port}")
    links = PaintLinks(secrets.token_bytes(32), ttl_s=900, public_url=f"http://127.0.0.1:{port}")
    jobs = BrowserJobs()
    async with PaintServer(settings, links, jobs):
        yield Painter(links.link(JOB, MEMBER), jobs)


# --- driving the page (blocking Selenium calls: the tests run them in a thread, the server keeps the loop) ------


def open_page(driver: WebDriver, url: str) -> None:
    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script("return window.paintReady === true"))
    driver.execute_script(  # what the page was given: the kinds of pointer that touched the canvas
        "window.pointerKinds = [];"
        "document.getElementById('canvas').addEventListener('pointerdown', e => pointerKinds.push(e.pointerType));"
    )
    settle(driver)


def pointer_kinds(driver: WebDriver) -> list[str]:
    kinds: list[str] = driver.execute_script("return window.pointerKinds")
    return kinds


def settle(driver: WebDriver) -> None:
    """Wait until the page has drawn what it was asked to (two animation frames)."""
    driver.execute_async_script("const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(done));")


def client_point(driver: WebDriver, x: float, y: float) -> tuple[float, float]:
    """Where image pixel (x, y) is in the viewport, in CSS px."""
    cx, cy = driver.execute_script("return window.paintImageToClient(arguments[0], arguments[1])", x, y)
    return float(cx), float(cy)


def on_screen(driver: WebDriver, x: float, y: float) -> tuple[int, int]:
    cx, cy = client_point(driver, x, y)
    return round(cx), round(cy)


def scale(driver: WebDriver) -> float:
    """Screen px per image px."""
    return (client_point(driver, 100, 0)[0] - client_point(driver, 0, 0)[0]) / 100


def stroke(driver: WebDriver, points: Sequence[tuple[float, float]], kind: str = interaction.POINTER_MOUSE) -> None:
    """One stroke through image points, by a mouse, a pen or a finger."""
    builder = ActionBuilder(driver, mouse=PointerInput(kind, f"{kind}-1"), duration=50)
    moves = [on_screen(driver, x, y) for x, y in points]
    builder.pointer_action.move_to_location(*moves[0]).pointer_down()
    for move in moves[1:]:
        builder.pointer_action.move_to_location(*move)
    builder.pointer_action.pointer_up()
    builder.perform()
    settle(driver)


def press(driver: WebDriver, control: str) -> None:
    driver.find_element(By.ID, control).click()
    settle(driver)


def submit(driver: WebDriver) -> str:
    press(driver, "submit")
    status = driver.find_element(By.ID, "status")
    WebDriverWait(driver, WAIT_S).until(lambda _: status.get_attribute("class") in ("done", "error"))
    return str(status.text)


def screen_pixel(shot: Image.Image, driver: WebDriver, x: float, y: float) -> tuple[int, int, int]:
    pixel: tuple[int, int, int] = shot.getpixel(on_screen(driver, x, y))  # type: ignore[assignment]
    return pixel


def screenshot(driver: WebDriver) -> Image.Image:
    return Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")


def repaint_at(mask: bytes, points: list[tuple[int, int]]) -> list[bool]:
    """Whether the bot's own mask reading (SPEC 3) repaints each point."""
    repaint = mask_repaint(Image.open(io.BytesIO(mask)), 128)
    return [repaint.getpixel(point) == 255 for point in points]


HORIZONTAL = [(100, 120), (200, 120), (300, 120)]
VERTICAL = [(420, 280), (420, 350), (420, 420)]
UNDER_STROKES = [(100, 120), (200, 120), (300, 120), (200, 128), (420, 300), (420, 420), (426, 350)]
FAR = [(0, 0), (600, 40), (200, 220), (50, 460), (639, 479), (300, 300)]


# --- the tests --------------------------------------------------------------------------------------------------


async def test_strokes_by_mouse_and_touch_become_a_white_on_black_png_of_the_image_size(
    browser: WebDriver, painter: Painter
) -> None:
    def paint() -> str:
        open_page(browser, painter.url)
        stroke(browser, HORIZONTAL)
        stroke(browser, VERTICAL, interaction.POINTER_TOUCH)
        press(browser, "invert")
        press(browser, "undo")  # undoes the invert, not a stroke
        assert pointer_kinds(browser) == ["mouse", "touch"]
        return submit(browser)

    assert await asyncio.to_thread(paint) == RECEIVED
    [mask] = painter.jobs.masks
    im = Image.open(io.BytesIO(mask))
    assert im.format == "PNG" and im.size == SIZE
    rgb = im.convert("RGB")
    assert all(rgb.getpixel(p) == (255, 255, 255) for p in UNDER_STROKES)
    assert all(rgb.getpixel(p) == (0, 0, 0) for p in FAR)
    assert im.mode != "RGBA" or im.getchannel("A").getextrema() == (255, 255)  # opaque
    assert repaint_at(mask, UNDER_STROKES + FAR) == [True] * len(UNDER_STROKES) + [False] * len(FAR)
    assert browser.find_element(By.ID, "submit").get_attribute("disabled") is not None  # sent once


async def test_invert_eraser_and_clear_change_the_mask_sent(browser: WebDriver, painter: Painter) -> None:
    def paint() -> str:
        open_page(browser, painter.url)
        stroke(browser, HORIZONTAL)
        press(browser, "clear")
        press(browser, "undo")  # the stroke is back
        press(browser, "eraser")
        stroke(browser, [(300, 100), (300, 140)], interaction.POINTER_PEN)
        press(browser, "invert")
        assert pointer_kinds(browser) == ["mouse", "pen"]
        return submit(browser)

    assert await asyncio.to_thread(paint) == RECEIVED
    [mask] = painter.jobs.masks
    # inverted: the stroke keeps, its erased end and everything else repaints
    assert repaint_at(mask, [(150, 120), (200, 120), (300, 120), *FAR]) == [False, False, True] + [True] * len(FAR)


async def test_stroke_is_shown_tinted_over_the_image_and_nowhere_else(browser: WebDriver, painter: Painter) -> None:
    def shots() -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        open_page(browser, painter.url)
        points = [(200, 120), (150, 125), (600, 40), (200, 220), (420, 350)]
        before = screenshot(browser)
        old = [screen_pixel(before, browser, *p) for p in points]
        stroke(browser, HORIZONTAL, interaction.POINTER_TOUCH)
        after = screenshot(browser)
        return old, [screen_pixel(after, browser, *p) for p in points]

    before, after = await asyncio.to_thread(shots)
    assert before[0] == before[1] == pytest.approx(BACKGROUND, abs=3)
    for old, new in zip(before[:2], after[:2], strict=True):  # under the stroke: half the image, half the tint
        assert new[0] > old[0] + 80 and new[2] < old[2] - 20, (old, new)
    for old, new in zip(before[2:], after[2:], strict=True):  # the yellow box and the rest are as they were
        assert new == pytest.approx(old, abs=2), (old, new)
    assert after[2] == pytest.approx((230, 200, 40), abs=3)
    assert painter.jobs.masks == []  # nothing is sent before Submit


async def test_zoomed_in_strokes_land_where_they_were_drawn(browser: WebDriver, painter: Painter) -> None:
    def paint() -> tuple[float, float, str]:
        open_page(browser, painter.url)
        fitted = scale(browser)
        press(browser, "zoom-in")
        press(browser, "zoom-in")
        canvas = browser.find_element(By.ID, "canvas")
        ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, -120).perform()
        settle(browser)
        zoomed = scale(browser)
        stroke(browser, [(320, 240), (340, 240)])
        return fitted, zoomed, submit(browser)

    fitted, zoomed, status = await asyncio.to_thread(paint)
    assert zoomed > fitted * 1.25**2 * 1.1 and status == RECEIVED  # two button presses and the wheel
    [mask] = painter.jobs.masks
    # the brush is 40 screen px whatever the zoom: fewer image pixels when zoomed in
    assert repaint_at(mask, [(320, 240), (340, 240), (330, 245), (330, 300), (100, 120)]) == [True] * 3 + [False] * 2


async def test_pinch_zooms_and_paints_nothing(browser: WebDriver, painter: Painter) -> None:
    def pinch() -> tuple[float, float, str]:
        open_page(browser, painter.url)
        before = scale(browser)
        builder = ActionBuilder(browser, mouse=PointerInput(interaction.POINTER_TOUCH, "finger-1"), duration=50)
        second = PointerActions(builder.add_pointer_input(interaction.POINTER_TOUCH, "finger-2"), duration=50)
        first = builder.pointer_action
        for actions, (start, end) in ((first, ((300, 240), (200, 240))), (second, ((340, 240), (440, 240)))):
            actions.move_to_location(*on_screen(browser, *start)).pointer_down()
            actions.move_to_location(*on_screen(browser, *end)).pointer_up()
        builder.perform()
        settle(browser)
        assert pointer_kinds(browser) == ["touch", "touch"]
        after = scale(browser)
        return before, after, submit(browser)

    before, after, status = await asyncio.to_thread(pinch)
    assert after > before * 2
    assert status == "Paint over the part to repaint first, then press Submit."  # the first finger drew nothing
    assert painter.jobs.masks == []


async def test_refused_mask_shows_the_reason_and_submit_can_be_pressed_again(
    browser: WebDriver, painter: Painter
) -> None:
    painter.jobs.refuse = "The mask covers less than one pixel of the image."

    def paint() -> tuple[str, str | None, str]:
        open_page(browser, painter.url)
        stroke(browser, HORIZONTAL)
        refused = submit(browser)
        enabled = browser.find_element(By.ID, "submit").get_attribute("disabled")
        painter.jobs.refuse = None
        return refused, enabled, submit(browser)

    refused, disabled, accepted = await asyncio.to_thread(paint)
    assert refused == "The mask covers less than one pixel of the image." and disabled is None
    assert accepted == RECEIVED and len(painter.jobs.masks) == 1


async def test_used_link_shows_why_in_the_page(browser: WebDriver, painter: Painter) -> None:
    painter.jobs.waiting = False  # the mask was given in an earlier process

    def visit() -> tuple[str, bool]:
        browser.get(painter.url)
        status = browser.find_element(By.ID, "status")
        WebDriverWait(browser, WAIT_S).until(lambda _: status.get_attribute("class") == "error")
        return str(status.text), bool(browser.execute_script("return window.paintReady === true"))

    text, ready = await asyncio.to_thread(visit)
    assert text == "This painting link was used already, or its job no longer waits for a mask." and not ready


async def test_on_a_phone_the_page_fits_and_a_finger_paints(browser: WebDriver, painter: Painter) -> None:
    phone = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}

    def paint() -> tuple[dict[str, object], str]:
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", phone)
        try:
            open_page(browser, painter.url)
            layout: dict[str, object] = browser.execute_script(
                "const controls = [...document.querySelectorAll('button, input')];"
                "const canvas = document.getElementById('canvas');"
                "return {overflow: document.documentElement.scrollWidth > innerWidth,"
                " small: controls.filter(c => c.getBoundingClientRect().height < 44).map(c => c.id),"
                " outside: controls.filter(c => c.getBoundingClientRect().bottom > innerHeight).map(c => c.id),"
                " touchAction: getComputedStyle(canvas).touchAction, canvasPixels: canvas.width / canvas.clientWidth};"
            )
            stroke(browser, HORIZONTAL, interaction.POINTER_TOUCH)
            return layout, submit(browser)
        finally:
            browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    layout, status = await asyncio.to_thread(paint)
    assert layout == {"overflow": False, "small": [], "outside": [], "touchAction": "none", "canvasPixels": 3}
    assert status == RECEIVED
    [mask] = painter.jobs.masks
    assert Image.open(io.BytesIO(mask)).size == SIZE
    assert repaint_at(mask, [(100, 120), (300, 120), (200, 220), (600, 40)]) == [True, True, False, False]
