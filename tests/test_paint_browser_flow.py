"""The mask painter end to end in a real browser (SPEC 12, issue 15): /inpaint without a mask through the fake
Discord, the private link, strokes by mouse and finger in headless Chromium, invert and undo, Submit on a phone-sized
screen, and the mask fal was sent, read back through the job's crop."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.actions.interaction import POINTER_TOUCH
from selenium.webdriver.common.actions.pointer_input import PointerInput
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from bot.models import Job, JobState
from tests import test_paint_browser as page
from tests.conftest import MakeRig
from tests.fakes.discord import walk_components
from tests.test_paint_flow import link_for, painter_rig, photo

browser = page.browser  # the same headless Chromium (flags, user data dir) as the page's own tests
pytestmark = page.pytestmark  # skipped, saying why, without /usr/bin/chromium or /usr/bin/chromedriver

SIZE = (1280, 960)  # large enough that fal gets only a crop around the strokes, scaled up (SPEC 11)
Point = tuple[float, float]
HORIZONTAL: list[Point] = [(160, 200), (300, 200), (440, 200)]  # by mouse
VERTICAL: list[Point] = [(520, 260), (520, 360), (520, 460)]  # by finger
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}
PHONE_LAYOUT = """
const controls = [...document.querySelectorAll('button, input')];
const submit = document.getElementById('submit');
const box = submit.getBoundingClientRect();
const hit = document.elementFromPoint((box.left + box.right) / 2, (box.top + box.bottom) / 2);
const off = c => {
  const r = c.getBoundingClientRect();
  return r.width === 0 || r.height === 0 || r.left < 0 || r.top < 0 || r.right > innerWidth || r.bottom > innerHeight;
};
return {
  viewport: [innerWidth, innerHeight],
  overflow: document.documentElement.scrollWidth > innerWidth,
  outside: controls.filter(off).map(c => c.id),
  small: controls.filter(c => c.getBoundingClientRect().height < 44).map(c => c.id),
  disabled: controls.filter(c => c.disabled).map(c => c.id),
  submitOnTop: hit === submit,
  canvasShown: document.getElementById('canvas').getBoundingClientRect().height > 200,
};
"""


@dataclass
class Painted:
    brush_px: float  # the brush's diameter in image px (40 screen px at the fitted zoom)
    kinds: list[str]  # the pointer types the canvas saw
    phone: dict[str, object]
    status: str
    submit_disabled: bool


def paint(driver: WebDriver, url: str) -> Painted:
    """Blocking: the member's part in the browser, from opening the link to the page's answer."""
    page.open_page(driver, url)
    brush_px = float(driver.find_element(By.ID, "size").get_attribute("value") or 0) / page.scale(driver)
    page.stroke(driver, HORIZONTAL)
    page.stroke(driver, VERTICAL, POINTER_TOUCH)
    page.press(driver, "invert")
    page.press(driver, "undo")  # undoes the invert: the two strokes are what is sent
    kinds = page.pointer_kinds(driver)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)  # the member turns to a phone-sized screen
    try:
        page.settle(driver)
        phone: dict[str, object] = driver.execute_script(PHONE_LAYOUT)
        submit = driver.find_element(By.ID, "submit")
        assert submit.is_displayed() and submit.is_enabled()
        left, top = submit.location["x"], submit.location["y"]
        tap = (round(left + submit.size["width"] / 2), round(top + submit.size["height"] / 2))
        finger = ActionBuilder(driver, mouse=PointerInput(POINTER_TOUCH, "finger"), duration=50)
        finger.pointer_action.move_to_location(*tap).pointer_down().pointer_up()
        finger.perform()  # Submit by a tap, as on a phone
        status = driver.find_element(By.ID, "status")
        WebDriverWait(driver, page.WAIT_S).until(lambda _: status.get_attribute("class") in ("done", "error"))
        return Painted(brush_px, kinds, phone, str(status.text), submit.get_attribute("disabled") is not None)
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def distance(point: Point, stroke: Sequence[Point]) -> float:
    """From an image point to the nearest part of a stroke's polyline."""
    best = math.inf
    for (ax, ay), (bx, by) in itertools.pairwise(stroke):
        dx, dy = bx - ax, by - ay
        t = max(0.0, min(1.0, ((point[0] - ax) * dx + (point[1] - ay) * dy) / (dx * dx + dy * dy)))
        best = min(best, math.hypot(point[0] - ax - t * dx, point[1] - ay - t * dy))
    return best


def at_fal(job: Job, mask: Image.Image, x: float, y: float) -> int:
    """The sent mask's value at image pixel (x, y), through the job's crop and the crop's scale at fal."""
    assert job.crop is not None
    left, top, right, bottom = job.crop
    sx = (x + 0.5 - left) * mask.width / (right - left)
    sy = (y + 0.5 - top) * mask.height / (bottom - top)
    value: int = mask.getpixel((min(int(sx), mask.width - 1), min(int(sy), mask.height - 1)))  # type: ignore[assignment]
    return value


async def test_a_member_paints_the_mask_in_a_browser_and_fal_gets_it(make_rig: MakeRig, browser: WebDriver) -> None:
    rig = await painter_rig(make_rig)
    assert rig.bot is not None
    store = rig.bot.service.store
    interaction = await rig.inpaint(photo(SIZE), prompt="a red barn")
    reply = await rig.wait_text(interaction, "Waiting for the mask")
    (waiting,) = [j for j in await store.list_unfinished() if j.state is JobState.PAINTING]
    assert rig.fal.submits == []

    _, url = await link_for(rig, reply)  # "Paint the mask": an ephemeral message with a link button
    assert url is not None and url.startswith(f"{rig.settings.web.public_url}/paint/")

    painted = await asyncio.to_thread(paint, browser, url)  # the bot's loop serves the page meanwhile
    assert painted.kinds == ["mouse", "touch"]
    assert painted.status.startswith("Mask received"), painted.status
    assert painted.submit_disabled  # sent once
    assert painted.phone == {
        "viewport": [PHONE["width"], PHONE["height"]],
        "overflow": False,
        "outside": [],
        "small": [],
        "disabled": [],  # Redo too: the invert was undone
        "submitOnTop": True,  # nothing covers Submit
        "canvasShown": True,
    }

    final = await rig.wait_text(interaction, "Inpainted")
    assert final.files and final.id in {m.id for m in rig.discord.messages_in("general")}
    assert "Repaint" in {c.get("label") for c in walk_components(final.components)}

    (submit,) = rig.fal.submits
    assert submit["prompt"] == "a red barn"
    header, data = submit["mask_url"].split(",", 1)
    assert header == "data:image/png;base64"
    job = await store.get(waiting.id)
    assert job is not None and job.crop is not None
    with Image.open(io.BytesIO(base64.b64decode(data))) as sent:
        mask = sent.convert("L")
    assert mask.size == (job.sent_width, job.sent_height)
    left, top, right, bottom = job.crop
    assert 0 < left < right < SIZE[0] and 0 < top < bottom < SIZE[1]  # only the part around the strokes went
    assert mask.size != (right - left, bottom - top)  # and it was scaled: the mapping below is not the identity
    hist = mask.histogram()
    assert hist[0] + hist[255] == mask.width * mask.height and hist[0] and hist[255]  # binary, both kinds

    radius = painted.brush_px / 2
    under, far = [], []
    for y in range(top, bottom, 8):
        for x in range(left, right, 8):
            near = min(distance((x, y), HORIZONTAL), distance((x, y), VERTICAL))
            if near <= radius / 2:
                under.append((x, y))
            elif near >= radius + 8:
                far.append((x, y))
    assert len(under) > 50 and len(far) > 500
    assert [p for p in under if at_fal(job, mask, *p) != 255] == []  # the strokes are repainted
    assert [p for p in far if at_fal(job, mask, *p) != 0] == []  # and nothing far from them
