"""Crop and composite (SPEC 11) on a 12 MP photo with a small mask: finish_output's time and peak memory, and the
megapixels fal receives for the crop against the whole image. ``python -m bench.composite`` runs it alone."""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import statistics
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops, ImageOps

from bench.rig import Figure, ms, report
from bot import images
from bot.config import FalSettings, LimitSettings
from bot.intake import estimate_cost
from bot.masks import Box, MaskSource
from bot.models import OutputFormat
from tests.rig import fixture

SIZE = (4000, 3000)  # a 12 MP phone photo
SMALL_BOX = Box(50, 30, 60, 40)  # 400 × 300 px: 1 % of the photo
RUNS = 5
FORMATS: tuple[OutputFormat, ...] = ("png", "jpeg")
FEATHER_PX = 8  # the option's default
BASELINE = "baseline (today: fal's result resized, no composite)"


def photo() -> bytes:
    """A camera-like JPEG: a real photo scaled to 12 MP with sensor-like noise (which makes PNG output honest)."""
    with Image.open(io.BytesIO(fixture("chelsea.png"))) as cat:
        big = cat.convert("RGB").resize(SIZE, Image.Resampling.BICUBIC)
    noise = Image.merge("RGB", [Image.effect_noise(SIZE, 4) for _ in range(3)])
    out = io.BytesIO()
    ImageChops.add(big, noise, 1, -128).save(out, "JPEG", quality=92)
    return out.getvalue()


def fal_answer(prepared: images.PreparedInput) -> bytes:
    """What fal sends back: a JPEG at the size it was sent (here the sent crop, colours inverted)."""
    with Image.open(io.BytesIO(prepared.image)) as sent:
        out = io.BytesIO()
        ImageOps.invert(sent.convert("RGB")).save(out, "JPEG", quality=95)
    return out.getvalue()


def finish(job: dict[str, Any], output_format: OutputFormat, composite: bool) -> bytes:
    extra = (
        {"original": job["original"], "crop": job["crop"], "full_mask": job["full_mask"], "feather_px": FEATHER_PX}
        if composite
        else {}
    )
    return images.finish_output(
        job["result"], width=SIZE[0], height=SIZE[1], output_format=output_format, limits=LimitSettings(), **extra
    )


def _encode_s(picture: Image.Image, **options: Any) -> float:
    started = time.perf_counter()
    picture.save(io.BytesIO(), "PNG", **options)
    return time.perf_counter() - started


def _memory_kib() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def peak_in_fresh_process(job: dict[str, Any], output_format: OutputFormat, composite: bool) -> tuple[float, float]:
    """(peak resident MiB of the process, MiB above its size before the call) for one finish_output."""
    before = _memory_kib()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    finish(job, output_format, composite)
    peak = _memory_kib()["VmHWM"]
    return peak / 1024, (peak - before) / 1024


def median_s(job: dict[str, Any], output_format: OutputFormat, composite: bool) -> float:
    finish(job, output_format, composite)  # warm-up: codecs, lookup tables
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        finish(job, output_format, composite)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _peak(job: dict[str, Any], output_format: OutputFormat, composite: bool) -> tuple[float, float]:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:  # a fresh process: its own peak
        return pool.submit(peak_in_fresh_process, job, output_format, composite).result()


def measure() -> list[Figure]:
    original = photo()
    limits = LimitSettings()
    source = MaskSource("box", box=SMALL_BOX)
    started = time.perf_counter()
    prepared = images.prepare(original, None, invert=False, limits=limits, source=source, feather_px=FEATHER_PX)
    prepare_s = time.perf_counter() - started
    whole = images.prepare(
        original, None, invert=False, limits=LimitSettings(crop_to_mask=False), source=source, feather_px=FEATHER_PX
    )
    job = {"original": original, "result": fal_answer(prepared), "crop": prepared.crop, "full_mask": prepared.full_mask}
    sent = (prepared.sent_width, prepared.sent_height)
    crop_mp = prepared.sent_width * prepared.sent_height / 1e6
    whole_mp = whole.sent_width * whole.sent_height / 1e6
    crop_size = f"{prepared.crop[2] - prepared.crop[0]}×{prepared.crop[3] - prepared.crop[1]}"
    figures = [
        Figure(
            f"prepare, {SIZE[0]}×{SIZE[1]} JPEG ({len(original) / 2**20:.1f} MiB), 1 % box",
            ms(prepare_s),
            baseline=f"crop {crop_size} sent at {prepared.sent_width}×{prepared.sent_height}",
        )
    ]
    for output_format in FORMATS:
        ours, today = median_s(job, output_format, True), median_s(job, output_format, False)
        figures.append(
            Figure(
                f"finish_output, {output_format.upper()} out, median of {RUNS} (decode original, composite, encode)",
                ms(ours),
                "< 1 s",
                ms(today),
                met=ours < 1,
            )
        )
    for output_format in FORMATS:
        peak, above = _peak(job, output_format, True)
        peak_today, above_today = _peak(job, output_format, False)
        figures.append(
            Figure(
                f"peak resident memory of finish_output, {output_format.upper()} out (fresh process; above its start)",
                f"{peak:.0f} MiB ({above:+.0f} MiB)",
                "< 400 MB",
                f"{peak_today:.0f} MiB ({above_today:+.0f} MiB)",
                met=peak < 381,
            )
        )
    with Image.open(io.BytesIO(finish(job, "png", True))) as delivered:
        delivered.load()
        rle_s = _encode_s(delivered, compress_level=1, compress_type=zlib.Z_RLE)
        default_strategy_s = _encode_s(delivered, compress_level=6)
    figures.append(
        Figure(
            "of the PNG finish_output: the encode of the 12 MP result alone (zlib RLE, as finish_output does)",
            ms(rle_s),
        )
    )
    figures.append(
        Figure(
            "PNG encode alone of that 12 MP result with zlib's default strategy (before: RLE is used now)",
            ms(default_strategy_s),
        )
    )
    price = FalSettings.model_fields["price_per_megapixel"].default
    crop_usd, whole_usd = (estimate_cost(price, w, h, 1) for w, h in (sent, (whole.sent_width, whole.sent_height)))
    figures.append(
        Figure(
            f"estimated cost of one image, 1 % mask (the crop), at ${price:g} per MP",
            f"${crop_usd:.4f} ({crop_usd / whole_usd:.0%} of the whole)",
            "≤ 1/3 of the whole",
            f"${whole_usd:.4f} (crop_to_mask = false)",
            met=crop_usd <= whole_usd / 3,
        )
    )
    figures.append(
        Figure(
            "megapixels fal receives, 1 % mask (the crop) vs the whole image",
            f"{crop_mp:.2f} MP ({crop_mp / whole_mp:.0%} of the whole)",
            "≤ 1/3 of the whole",
            f"{whole_mp:.2f} MP (crop_to_mask = false)",
            met=crop_mp <= whole_mp / 3,
        )
    )
    return figures


async def run() -> list[Figure]:
    return await asyncio.to_thread(measure)


if __name__ == "__main__":
    started = time.monotonic()
    results = asyncio.run(run())
    report(f"Crop and composite of a 12 MP photo ({time.monotonic() - started:.0f} s)", results, BASELINE)
