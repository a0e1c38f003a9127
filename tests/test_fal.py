"""FalQueueClient against the fake fal queue over real HTTP on 127.0.0.1; the clock is fake, nothing really waits."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image
from pytest_aiohttp import AiohttpServer

from bot.config import FalSettings
from bot.errors import UserFacingError
from bot.fal import FalQueueClient
from bot.fal_models import (
    FalError,
    FalHandle,
    FalJobError,
    FalRejectedError,
    FalSubmitUnknownError,
    FalTransientError,
    InpaintInput,
    LoraWeight,
    QueueStatus,
    describe_detail,
    parse_retry_after,
    retry_delay,
)
from tests.fakes.fal import FakeFal, start_fake_fal

KEY = "test-key-7f3a:s3cr3t"
QUEUED_THEN_DONE = [
    ("IN_QUEUE", 3),
    ("IN_QUEUE", 2),
    ("IN_QUEUE", 1),
    ("IN_QUEUE", 0),
    ("IN_PROGRESS", None),
    ("COMPLETED", None),
]


def png_data_uri(size: tuple[int, int], color: int | tuple[int, int, int] = (200, 30, 30), mode: str = "RGB") -> str:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def payload(**changes: Any) -> InpaintInput:
    fields: dict[str, Any] = {
        "prompt": "a red hat",
        "image_url": png_data_uri((64, 48)),
        "mask_url": png_data_uri((64, 48), 255, "L"),
        "strength": 0.85,
        "num_inference_steps": 28,
        "guidance_scale": 3.5,
        "num_images": 1,
        "seed": None,
        "output_format": "png",
    }
    return InpaintInput(**(fields | changes))


class FakeSleep:
    """Records each delay and returns at once; ``hook`` runs after each one (e.g. to release a held job)."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.hook: Callable[[int], None] | None = None

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.hook is not None:
            self.hook(len(self.calls))
        await asyncio.sleep(0)


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


@dataclass
class Rig:
    fake: FakeFal
    client: FalQueueClient
    sleep: FakeSleep
    settings: FalSettings
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)  # every request the session made

    async def run(self) -> tuple[FalHandle, list[tuple[str, int | None]]]:
        handle, _ = await self.client.submit(payload())
        return handle, [s.progress async for s in self.client.watch(handle)]


@pytest.fixture
async def fal_rig(aiohttp_server: AiohttpServer) -> AsyncIterator[Callable[..., Any]]:
    sessions: list[aiohttp.ClientSession] = []
    fakes: list[FakeFal] = []

    async def make(settings: dict[str, Any] | None = None, **knobs: Any) -> Rig:
        fake = await start_fake_fal(aiohttp_server, key=KEY, **knobs)
        fakes.append(fake)
        assert fake.base_url is not None
        values: dict[str, Any] = {
            "key": KEY,
            "auth_scheme": knobs.get("auth_scheme", "Key"),
            "base_url": fake.base_url,
            "rest_base_url": fake.base_url,
            "media_hosts": [fake.media_host],
            "status_mode": "poll",
            "poll_interval_s": 1.0,
            "max_poll_interval_s": 4.0,
            "submit_timeout_s": 5,
            "request_timeout_s": 5,
            "max_retries": 3,
        }
        fal_settings = FalSettings(**(values | (settings or {})))
        seen: list[tuple[str, str, str | None]] = []

        async def on_start(_: Any, __: Any, params: aiohttp.TraceRequestStartParams) -> None:
            seen.append((params.method, str(params.url), params.headers.get("Authorization")))

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(on_start)
        session = aiohttp.ClientSession(trace_configs=[trace])
        sessions.append(session)
        sleep = FakeSleep()
        client = FalQueueClient(session, fal_settings, sleep=sleep, rand=lambda: 1.0)
        return Rig(fake, client, sleep, fal_settings, seen)

    yield make
    for session in sessions:
        await session.close()
    for fake in fakes:
        assert fake.errors == [], "the fake fal crashed"


# submit


@pytest.mark.parametrize("scheme", ["Key", "Bearer"])
async def test_submit_sends_fal_s_payload_with_the_configured_auth_scheme(fal_rig: Any, scheme: str) -> None:
    rig: Rig = await fal_rig(auth_scheme=scheme)
    sent = payload(seed=7)

    handle, status = await rig.client.submit(sent)

    assert rig.fake.submits == [sent.to_wire()]
    body = rig.fake.submits[0]
    assert body["seed"] == 7 and body["output_format"] == "png" and body["enable_safety_checker"] is True
    assert "loras" not in body
    assert [r.authorization for r in rig.fake.requests] == [f"{scheme} {KEY}"]
    assert rig.fake.requests[0].method == "POST" and rig.fake.requests[0].path == "/fal-ai/flux-lora/inpainting"
    assert status == QueueStatus(status="IN_QUEUE", queue_position=3)
    assert handle == rig.client.handle_for(handle.request_id)


def test_random_seed_and_empty_loras_are_left_out_of_the_body() -> None:
    body = payload().to_wire()
    assert "seed" not in body and "loras" not in body
    with_lora = payload(loras=[LoraWeight(path="https://example.com/style.safetensors", scale=0.8)]).to_wire()
    assert with_lora["loras"] == [{"path": "https://example.com/style.safetensors", "scale": 0.8}]


async def test_request_urls_drop_the_endpoint_sub_path(fal_rig: Any) -> None:
    rig: Rig = await fal_rig()
    base = rig.fake.base_url

    handle = rig.client.handle_for("abc-123")

    assert handle.status_url == f"{base}/fal-ai/flux-lora/requests/abc-123/status"
    assert handle.response_url == f"{base}/fal-ai/flux-lora/requests/abc-123"
    assert handle.cancel_url == f"{base}/fal-ai/flux-lora/requests/abc-123/cancel"
    handle, seen = await rig.run()
    assert seen == QUEUED_THEN_DONE
    await rig.client.result(handle)
    assert {r.path for r in rig.fake.requests[1:]} == {
        f"/fal-ai/flux-lora/requests/{handle.request_id}/status",
        f"/fal-ai/flux-lora/requests/{handle.request_id}",
    }


async def test_request_id_cannot_escape_the_request_path() -> None:
    async with aiohttp.ClientSession() as session:
        client = FalQueueClient(session, FalSettings(key=KEY, base_url="http://127.0.0.1:9"))
        handle = client.handle_for("../../x?y")
    assert handle.response_url == "http://127.0.0.1:9/fal-ai/flux-lora/requests/..%2F..%2Fx%3Fy"


@pytest.mark.parametrize("mode", ["poll", "stream"])
async def test_proxy_urls_are_never_followed_and_the_token_stays_on_the_configured_base(
    fal_rig: Any, mode: str
) -> None:
    rig: Rig = await fal_rig({"status_mode": mode}, auth_scheme="Bearer", proxy_mode=True)

    handle, seen = await rig.run()
    await rig.client.result(handle)
    other, _ = await rig.client.submit(payload())
    assert await rig.client.cancel(other) == "cancelled"
    await rig.client.status(other)

    assert seen == QUEUED_THEN_DONE
    assert rig.seen, "the trace saw no request"
    for method, url, auth in rig.seen:
        assert url.startswith(f"{rig.fake.base_url}/fal-ai/flux-lora/"), (method, url)
        assert auth == f"Bearer {KEY}"
    assert all(r.host == rig.fake.media_host for r in rig.fake.requests)


async def test_handle_with_urls_on_another_host_is_rebuilt_on_the_configured_base(fal_rig: Any) -> None:
    rig: Rig = await fal_rig()
    handle, _ = await rig.client.submit(payload())
    foreign = FalHandle(
        request_id=handle.request_id,
        status_url=f"https://queue.fal.run/fal-ai/flux-pro/requests/{handle.request_id}/status",
        response_url=f"https://queue.fal.run/fal-ai/flux-pro/requests/{handle.request_id}",
        cancel_url=f"https://queue.fal.run/fal-ai/flux-pro/requests/{handle.request_id}/cancel",
    )

    status = await rig.client.status(foreign)

    assert status.progress == ("IN_QUEUE", 3)
    assert all(url.startswith(rig.fake.base_url or "?") for _, url, _ in rig.seen)


async def test_422_becomes_a_readable_rejection_and_creates_no_job(fal_rig: Any) -> None:
    rig: Rig = await fal_rig()

    with pytest.raises(FalRejectedError) as info:
        await rig.client.submit(payload(strength=1.5, num_images=5))

    assert info.value.message == (  # in the order of fal's model (x-fal-order-properties)
        "fal rejected the request: num_images: Input should be less than or equal to 4; "
        "strength: Input should be less than or equal to 1"
    )
    assert rig.fake.jobs == {} and rig.sleep.calls == []
    [refused] = rig.fake.refused
    assert [d["loc"] for d in refused.detail] == [["body", "num_images"], ["body", "strength"]]


async def test_refused_key_is_a_rejection_that_never_shows_the_key(fal_rig: Any) -> None:
    rig: Rig = await fal_rig({"auth_scheme": "Bearer"})  # the fake wants "Key"

    with pytest.raises(FalRejectedError) as info:
        await rig.client.submit(payload())

    assert "refused this bot's API key" in info.value.message
    assert KEY not in str(info.value) and "s3cr3t" not in info.value.message
    assert rig.fake.jobs == {}


async def test_submit_503_is_retried_and_creates_exactly_one_job(fal_rig: Any) -> None:
    rig: Rig = await fal_rig(submit_5xx_count=2)

    handle, status = await rig.client.submit(payload())

    assert len(rig.fake.submits) == 3
    assert list(rig.fake.jobs) == [handle.request_id]
    assert status.status == "IN_QUEUE"
    assert rig.sleep.calls == [0.5, 1.0]  # rand=1: the full ceiling of base·2^attempt


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [
        (502, FalSubmitUnknownError, "may still run and be billed"),
        (504, FalSubmitUnknownError, "may still run and be billed"),
        (500, FalTransientError, "nothing was charged"),
    ],
    ids=["502", "504", "500"],
)
async def test_other_submit_5xx_are_never_resent(fal_rig: Any, status: int, error: type[FalError], text: str) -> None:
    rig: Rig = await fal_rig(submit_5xx_count=1, submit_5xx_status=status)

    with pytest.raises(error) as info:
        await rig.client.submit(payload())

    assert text in info.value.message and f"HTTP {status}" in info.value.message
    assert len(rig.fake.submits) == 1 and rig.sleep.calls == []


async def test_rate_limited_submit_waits_as_long_as_retry_after_says(fal_rig: Any) -> None:
    rig: Rig = await fal_rig(rate_limit_count=1, retry_after="7")

    await rig.client.submit(payload())

    assert rig.sleep.calls == [7.0]
    assert len(rig.fake.jobs) == 1


async def test_submit_still_refused_after_the_retries_says_nothing_was_sent(fal_rig: Any) -> None:
    rig: Rig = await fal_rig({"max_retries": 2}, submit_5xx_count=10)

    with pytest.raises(FalTransientError) as info:
        await rig.client.submit(payload())

    assert "nothing was sent or charged" in info.value.message
    assert len(rig.fake.submits) == 3 and rig.fake.jobs == {}


async def test_submit_read_timeout_is_not_resent(fal_rig: Any) -> None:
    rig: Rig = await fal_rig({"submit_timeout_s": 0.2}, hang_submit=True)

    with pytest.raises(FalSubmitUnknownError) as info:
        await rig.client.submit(payload())

    assert "may still run and be billed" in info.value.message
    assert len(rig.fake.submits) == 1 and len(rig.fake.jobs) == 1
    assert rig.sleep.calls == []


async def test_submit_without_a_connection_is_retried_then_reported_as_not_sent() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    settings = FalSettings(key=KEY, base_url=f"http://127.0.0.1:{port}", max_retries=2)
    sleep = FakeSleep()
    async with aiohttp.ClientSession() as session:
        client = FalQueueClient(session, settings, sleep=sleep, rand=lambda: 1.0)
        with pytest.raises(FalTransientError) as info:
            await client.submit(payload())
    assert "could not connect" in info.value.message and "nothing was sent" in info.value.message
    assert sleep.calls == [0.5, 1.0]


# status and watch


async def test_poll_watch_reaches_completed_through_flaky_status_calls(fal_rig: Any) -> None:
    rig: Rig = await fal_rig({"max_retries": 8}, status_5xx_rate=0.3, in_progress_steps=2)

    _, seen = await rig.run()

    assert seen == QUEUED_THEN_DONE
    assert rig.fake.status_calls > 7  # some calls were answered 503 and retried
    assert rig.fake.stream_calls == 0


async def test_dropped_status_connections_are_retried(fal_rig: Any) -> None:
    rig: Rig = await fal_rig(drop_status_count=3)
    handle, _ = await rig.client.submit(payload())

    status = await rig.client.status(handle)

    assert status.progress == ("IN_QUEUE", 3)
    statuses = [r.status for r in rig.fake.requests if r.path.endswith("/status")]
    assert statuses.count(None) == 3 and statuses[-1] == 202  # aiohttp itself re-sends a GET once per drop
    assert rig.sleep.calls


async def test_status_asks_for_logs_only_when_told(fal_rig: Any) -> None:
    rig: Rig = await fal_rig()
    handle, _ = await rig.client.submit(payload())

    await rig.client.status(handle)
    await rig.client.status(handle, logs=True)

    assert [r.query for r in rig.fake.requests if r.path.endswith("/status")] == ["", "logs=1"]


async def test_status_failing_past_the_retries_is_transient(fal_rig: Any) -> None:
    rig: Rig = await fal_rig({"max_retries": 2}, status_5xx_rate=1.0)
    handle, _ = await rig.client.submit(payload())

    with pytest.raises(FalTransientError) as info:
        await rig.client.status(handle)

    assert "HTTP 503" in info.value.message
    assert rig.fake.status_calls == 3


async def test_unknown_request_is_a_job_error(fal_rig: Any) -> None:
    rig: Rig = await fal_rig()

    with pytest.raises(FalJobError, match="no longer knows this job"):
        await rig.client.status(rig.client.handle_for("00000000-0000-0000-0000-00000000beef"))


async def test_poll_interval_grows_while_nothing_changes_and_resets_on_a_change(fal_rig: Any) -> None:
    rig: Rig = await fal_rig(hold=True, positions=[5, 4])
    rig.sleep.hook = lambda n: rig.fake.release() if n == 6 else None

    _, seen = await rig.run()

    assert seen == [("IN_QUEUE", 5), ("IN_QUEUE", 4), ("IN_PROGRESS", None), ("COMPLETED", None)]
    # the poll right after the release still shows position 5 (the fake moves on after answering)
    assert rig.sleep.calls[:8] == [1.0, 1.5, 2.25, 3.375, 4.0, 4.0, 4.0, 1.0]


async def test_stream_yields_positions_then_completed(fal_rig: Any) -> None:
    rig: Rig = await fal_rig({"status_mode": "stream"}, in_progress_steps=3)

    _, seen = await rig.run()

    assert seen == QUEUED_THEN_DONE
    assert rig.fake.stream_calls == 1 and rig.fake.status_calls == 0
    assert rig.sleep.calls == []


async def test_stream_skips_keep_alive_comments_while_the_job_waits(fal_rig: Any) -> None:
    rig: Rig = await fal_rig({"status_mode": "stream"}, hold=True, stream_keepalive_s=0.02, positions=[1, 0])
    handle, _ = await rig.client.submit(payload())
    seen: list[tuple[str, int | None]] = []

    async def watch() -> None:
        async for status in rig.client.watch(handle):
            seen.append(status.progress)

    task = asyncio.create_task(watch())
    await eventually(lambda: rig.fake.keepalives_sent >= 2)
    assert seen == [("IN_QUEUE", 1)]
    rig.fake.release()
    await asyncio.wait_for(task, 5)

    assert seen == [("IN_QUEUE", 1), ("IN_QUEUE", 0), ("IN_PROGRESS", None), ("COMPLETED", None)]
    assert rig.fake.status_calls == 0


def far_back_waits(status: QueueStatus) -> float:
    """A caller that can wait 20 s for news of a job further back than 10th."""
    return 20.0 if status.status == "IN_QUEUE" and (status.queue_position or 0) > 10 else 0.0


async def test_a_job_far_back_leaves_its_stream_and_is_checked_at_the_callers_pace(fal_rig: Any) -> None:
    rig: Rig = await fal_rig({"status_mode": "stream"}, auto_advance=False, positions=[40, 30, 20, 9, 2])
    handle, _ = await rig.client.submit(payload())
    rig.sleep.hook = lambda _: rig.fake.advance(handle.request_id)  # fal's queue moves a place while the bot waits
    seen: list[tuple[str, int | None]] = []

    async def watch() -> None:
        async for status in rig.client.watch(handle, far_back_waits):
            seen.append(status.progress)

    task = asyncio.create_task(watch())
    await eventually(lambda: rig.fake.stream_calls == 2)  # 9th: near the front, the stream again
    # 40 by the stream; 30, 20 and 9 by status calls, each 20 s after the last look
    assert seen == [("IN_QUEUE", 40), ("IN_QUEUE", 30), ("IN_QUEUE", 20), ("IN_QUEUE", 9)]
    assert rig.sleep.calls == [20.0, 20.0, 20.0] and rig.fake.status_calls == 3
    rig.sleep.hook = None
    rig.fake.advance(handle.request_id)
    await eventually(lambda: seen[-1] == ("IN_QUEUE", 2))
    rig.fake.advance(handle.request_id, steps=3)
    await asyncio.wait_for(task, 5)

    assert seen[-1] == ("COMPLETED", None) and rig.fake.status_calls == 3 and rig.sleep.calls == [20.0] * 3


async def test_a_poll_watch_waits_as_long_as_the_caller_can(fal_rig: Any) -> None:
    rig: Rig = await fal_rig(positions=[40, 9, 0])
    handle, _ = await rig.client.submit(payload())

    seen = [s.progress async for s in rig.client.watch(handle, far_back_waits)]

    assert seen[0] == ("IN_QUEUE", 40) and seen[-1] == ("COMPLETED", None)
    assert rig.sleep.calls[0] == 20.0 and 20.0 not in rig.sleep.calls[1:]
    assert rig.fake.stream_calls == 0


async def test_stream_refused_falls_back_to_polling(fal_rig: Any) -> None:
    rig: Rig = await fal_rig({"status_mode": "stream"}, stream=False)

    _, seen = await rig.run()

    assert seen == QUEUED_THEN_DONE
    assert rig.fake.status_calls >= 6


async def test_stream_closed_early_continues_by_polling_without_repeats(fal_rig: Any) -> None:
    rig: Rig = await fal_rig({"status_mode": "stream"}, stream_drop_after=2)

    _, seen = await rig.run()

    assert seen == QUEUED_THEN_DONE
    assert rig.fake.stream_calls == 1 and rig.fake.status_calls > 0


@pytest.mark.parametrize("mode", ["poll", "stream"])
async def test_completed_with_an_error_raises_the_reason(fal_rig: Any, mode: str) -> None:
    rig: Rig = await fal_rig({"status_mode": mode}, fail_with="CUDA out of memory")

    with pytest.raises(FalJobError) as info:
        await rig.run()

    assert info.value.message == "fal could not run this job (runner_server_error): CUDA out of memory"
    assert rig.fake.result_calls == 1  # fetched once for the reason, a stored 500 is not retried


async def test_input_fal_cannot_load_reports_the_field(fal_rig: Any) -> None:
    rig: Rig = await fal_rig()
    handle, _ = await rig.client.submit(payload(image_url="https://example.com/missing.png"))

    with pytest.raises(FalJobError) as info:
        _ = [s async for s in rig.client.watch(handle)]

    assert info.value.message == "fal rejected the input: image_url: Could not load the image."


# result


async def test_result_describes_real_images_at_the_input_size(fal_rig: Any) -> None:
    rig: Rig = await fal_rig(nsfw=[False, True])
    handle, _ = await rig.client.submit(payload(num_images=2, seed=99))
    _ = [s async for s in rig.client.watch(handle)]

    output = await rig.client.result(handle)

    assert output.seed == 99 and output.has_nsfw_concepts == [False, True] and output.prompt == "a red hat"
    assert [(i.width, i.height, i.content_type) for i in output.images] == [(64, 48, "image/png")] * 2
    async with aiohttp.ClientSession() as plain, plain.get(output.images[0].url) as resp:
        image = Image.open(io.BytesIO(await resp.read()))
    assert (image.format, image.size) == ("PNG", (64, 48))
    assert output.images[0].url.startswith(f"http://{rig.fake.media_host}/files/")


async def test_expired_result_says_fal_no_longer_has_it(fal_rig: Any) -> None:
    rig: Rig = await fal_rig(result_expired=True)
    handle, _ = await rig.run()

    with pytest.raises(FalJobError) as info:
        await rig.client.result(handle)

    assert "fal no longer has this job's result" in info.value.message
    assert rig.fake.result_calls == 1


async def test_slow_result_times_out_as_transient(fal_rig: Any) -> None:
    rig: Rig = await fal_rig({"request_timeout_s": 0.1, "max_retries": 1}, slow_result_s=0.5)
    handle, _ = await rig.run()

    with pytest.raises(FalTransientError) as info:
        await rig.client.result(handle)

    assert "timed out" in info.value.message
    assert rig.fake.result_calls == 2


# cancel


async def test_cancel_outcomes_follow_fal_s_answers(fal_rig: Any) -> None:
    rig: Rig = await fal_rig(hold=True)
    queued, _ = await rig.client.submit(payload())
    done, _ = await rig.client.submit(payload())
    rig.fake.complete(done.request_id)

    assert await rig.client.cancel(queued) == "cancelled"
    assert await rig.client.cancel(done) == "already_completed"
    assert await rig.client.cancel(rig.client.handle_for("00000000-0000-0000-0000-00000000beef")) == "not_found"
    assert [answer for _, answer in rig.fake.cancels] == ["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]
    with pytest.raises(FalJobError, match="cancelled at fal"):
        _ = [s async for s in rig.client.watch(queued)]


# storage


async def test_upload_goes_through_fal_storage_and_never_sends_the_key_to_the_upload_url(fal_rig: Any) -> None:
    rig: Rig = await fal_rig(result_size=None)
    out = io.BytesIO()
    Image.new("RGB", (80, 40), "blue").save(out, "PNG")

    image_url = await rig.client.upload(out.getvalue(), "image/png", "input.png")
    mask_url = await rig.client.upload(
        base64.b64decode(png_data_uri((80, 40), 255, "L").split(",")[1]), "image/png", "m.png"
    )
    handle, _ = await rig.client.submit(payload(image_url=image_url, mask_url=mask_url))
    _ = [s async for s in rig.client.watch(handle)]
    output = await rig.client.result(handle)

    assert image_url.startswith(f"{rig.fake.base_url}/files/")
    assert (output.images[0].width, output.images[0].height) == (80, 40)
    puts = [auth for method, url, auth in rig.seen if method == "PUT"]
    assert puts == [None, None]


async def test_upload_with_a_proxy_token_refuses_to_send_it_to_fal_s_storage(fal_rig: Any) -> None:
    rig: Rig = await fal_rig({"rest_base_url": "https://rest.fal.ai"}, auth_scheme="Bearer")

    with pytest.raises(FalRejectedError, match=r"turn off fal\.upload_inputs"):
        await rig.client.upload(b"x", "image/png", "input.png")

    assert rig.seen == []


# secrets


async def test_repr_hides_the_key(fal_rig: Any) -> None:
    rig: Rig = await fal_rig()
    assert KEY not in repr(rig.client) and "s3cr3t" not in repr(rig.client)
    assert rig.settings.base_url in repr(rig.client)


async def test_text_from_fal_is_cleaned_of_the_key_and_links(aiohttp_server: AiohttpServer) -> None:
    async def echo(request: web.Request) -> web.Response:
        auth = request.headers["Authorization"]
        msg = f"bad header {auth}; see https://fal.ai/docs?token=abc and data:image/png;base64,AAAA"
        return web.json_response(
            {"detail": [{"loc": ["body", "prompt"], "msg": msg, "type": "x", "input": auth}]}, status=422
        )

    app = web.Application()
    app.router.add_post("/fal-ai/flux-lora/inpainting", echo)
    server = await aiohttp_server(app)
    settings = FalSettings(key=KEY, base_url=str(server.make_url("")).rstrip("/"))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(FalRejectedError) as info:
            await FalQueueClient(session, settings).submit(payload())

    assert (
        info.value.message == "fal rejected the request: prompt: bad header Key [redacted]; see (a link) and (a link)"
    )


async def test_no_error_text_or_log_line_holds_the_key(fal_rig: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[FalError] = []
    scenarios: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"auth_scheme": "Bearer"}, {}),
        ({"submit_timeout_s": 0.2}, {"hang_submit": True}),
        ({"max_retries": 1}, {"submit_5xx_count": 5}),
        ({}, {"fail_with": f"boom {KEY}"}),
        ({}, {"result_expired": True}),
    ]
    for settings, knobs in scenarios:
        rig: Rig = await fal_rig(settings, **knobs)
        try:
            handle, _ = await rig.run()
            await rig.client.result(handle)
        except FalError as exc:
            errors.append(exc)
    assert len(errors) == len(scenarios)
    for error in errors:
        assert isinstance(error, UserFacingError)
        for text in (str(error), error.message, repr(error)):
            assert KEY not in text and "s3cr3t" not in text, text
    assert "bot.fal" in caplog.text  # the client did log its retries and failures
    assert "s3cr3t" not in caplog.text


# pure decisions


@pytest.mark.parametrize(
    ("attempt", "rand", "retry_after", "expected"),
    [
        (0, 1.0, None, 0.5),
        (1, 1.0, None, 1.0),
        (3, 1.0, None, 4.0),
        (10, 1.0, None, 30.0),
        (500, 1.0, None, 30.0),
        (3, 0.5, None, 2.0),
        (3, 0.0, None, 0.0),
        (2, 1.0, 7.0, 7.0),
        (2, 0.0, 7.0, 7.0),
        (2, 1.0, 9999.0, 120.0),
        (2, 1.0, -3.0, 0.0),
    ],
    ids=[
        "first",
        "second",
        "fourth",
        "capped",
        "huge-attempt",
        "half-jitter",
        "zero-jitter",
        "retry-after",
        "retry-after-ignores-jitter",
        "retry-after-clamped",
        "retry-after-negative",
    ],
)
def test_retry_delay(attempt: int, rand: float, retry_after: float | None, expected: float) -> None:
    assert retry_delay(attempt, base=0.5, cap=30.0, rand=rand, retry_after=retry_after) == pytest.approx(expected)


def test_retry_delay_stays_within_the_ceiling_for_any_jitter() -> None:
    for attempt in range(12):
        for rand in (0.0, 0.1, 0.37, 0.99, 1.0):
            delay = retry_delay(attempt, base=1.0, cap=20.0, rand=rand)
            assert 0.0 <= delay <= min(20.0, 2.0**attempt)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        ("2.5", 2.5),
        ("-1", 0.0),
        ("Wed, 01 Jan 2025 00:00:30 GMT", 30.0),
        ("Tue, 31 Dec 2024 23:00:00 GMT", 0.0),
        ("soon", None),
    ],
    ids=["absent", "empty", "seconds", "fraction", "negative", "date", "past-date", "garbage"],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=datetime(2025, 1, 1, tzinfo=UTC)) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"detail": [{"loc": ["body", "strength"], "msg": "Input should be less than or equal to 1"}]},
         "strength: Input should be less than or equal to 1"),
        ({"detail": [{"loc": ["body", "loras", 0, "path"], "msg": "Field required", "input": "secret"}]},
         "loras.0.path: Field required"),
        ({"detail": [{"loc": ["body"], "msg": "content policy", "type": "content_policy_violation"}]},
         "content policy"),
        ({"detail": "invalid key credentials"}, "invalid key credentials"),
        ({"detail": []}, None),
        ({"status": "NOT_FOUND"}, None),
        (["not", "a", "dict"], None),
    ],
    ids=["range", "nested-loc", "no-field", "string", "empty-list", "no-detail", "not-an-object"],
)  # fmt: skip
def test_describe_detail(body: object, expected: str | None) -> None:
    assert describe_detail(body) == expected
