"""The ops endpoints over a real socket: /healthz against a real store and scheduler, /metrics after real fal calls
(the fake fal) and real Discord answers (a small fake), read back with Prometheus' own parser."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest.mock import create_autospec

import aiohttp
import pytest
from aiohttp import web
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpServer

from bot.cli import main
from bot.config import FalSettings
from bot.fal import FalQueueClient
from bot.fal_models import FalSubmitUnknownError, InpaintInput
from bot.metrics import Metrics
from bot.models import InpaintOptions, Job, JobState, Origin, utcnow
from bot.ops import OpsServer, ask_healthz
from bot.pacing import DISCORD_EPOCH_MS, RequestBudget, budget_trace
from bot.pipeline import JobPipeline
from bot.scheduler import Scheduler
from bot.serving import split_listen
from bot.store import JobStore
from tests.conftest import MakeRig
from tests.fakes.fal import FakeFal, start_fake_fal
from tests.rig import fixture

KEY = "ops-test-key:5ecr3t-value"
GUILD_ID = 424242424242424242
USER_ID = 777777777777777777
ALLOWED_LABELS = {"state", "kind", "status", "route", "scope", "guild", "le"}  # le: a histogram's buckets
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def payload() -> InpaintInput:
    def png(mode: str, color: int | tuple[int, int, int]) -> str:
        out = io.BytesIO()
        Image.new(mode, (16, 16), color).save(out, "PNG")
        return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()

    return InpaintInput(
        prompt="a red hat",
        image_url=png("RGB", (200, 30, 30)),
        mask_url=png("L", 255),
        strength=0.85,
        num_inference_steps=28,
        guidance_scale=3.5,
        num_images=1,
        seed=None,
        output_format="png",
    )


def job(state: JobState, *, user_id: int = USER_ID) -> Job:
    origin = Origin(
        user_id=user_id,
        guild_id=GUILD_ID,
        channel_id=1,
        application_id=2,
        interaction_id=3,
        interaction_token="tok",
        token_expires_at=utcnow() + timedelta(minutes=15),
    )
    return Job(origin=origin, options=InpaintOptions(prompt="a red hat"), state=state)


async def no_sleep(_seconds: float) -> None:
    await asyncio.sleep(0)


@dataclass
class Ops:
    """An OpsServer on 127.0.0.1 (a port the system chose) over a real store and a real scheduler."""

    server: OpsServer
    store: JobStore
    scheduler: Scheduler
    metrics: Metrics
    http: aiohttp.ClientSession
    gateway: dict[str, bool] = field(default_factory=lambda: {"up": True})

    async def get(self, path: str, method: str = "GET") -> tuple[int, str, str]:
        assert self.server.url is not None
        async with self.http.request(method, f"{self.server.url}{path}") as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.text()

    async def health(self) -> tuple[int, dict[str, Any]]:
        status, _, body = await self.get("/healthz")
        return status, json.loads(body)

    async def scrape(self) -> Samples:
        status, content_type, body = await self.get("/metrics")
        assert status == 200 and content_type == CONTENT_TYPE_LATEST
        return parse(body)

    def fal(self, fake: FakeFal, **settings: Any) -> FalQueueClient:
        values: dict[str, Any] = {
            "key": KEY,
            "base_url": fake.base_url,
            "rest_base_url": fake.base_url,
            "media_hosts": [fake.media_host],
            "status_mode": "poll",
            "poll_interval_s": 1.0,
            "max_retries": 3,
        }
        return FalQueueClient(self.http, FalSettings(**(values | settings)), sleep=no_sleep, metrics=self.metrics)


@pytest.fixture
async def ops(tmp_path: Path) -> AsyncIterator[Ops]:
    store = await JobStore.open(tmp_path / "ops.sqlite3")
    metrics = Metrics(state_counts=store.count_by_state)
    scheduler = Scheduler(store=store, pipeline=create_autospec(JobPipeline, instance=True), max_concurrent=1)
    scheduler.begin()
    gateway = {"up": True}
    server = OpsServer(
        "127.0.0.1:0",
        metrics=metrics,
        gateway_ok=lambda: gateway["up"],
        store_ping=store.ping,
        scheduler_running=lambda: scheduler.running,
    )
    async with aiohttp.ClientSession() as http, server:
        yield Ops(server, store, scheduler, metrics, http, gateway)
    await scheduler.close()
    await store.close()


# /healthz


async def test_healthz_is_ok_while_the_gateway_the_store_and_the_scheduler_are(ops: Ops) -> None:
    assert await ops.health() == (200, {"status": "ok"})


def _gateway_down(ops: Ops) -> Awaitable[None] | None:
    ops.gateway["up"] = False
    return None


@pytest.mark.parametrize(
    ("break_it", "failed", "reason"),
    [
        (_gateway_down, "gateway", "the Discord gateway is not connected"),
        (lambda ops: ops.store.close(), "store", "the store did not answer (ValueError)"),
        (lambda ops: ops.scheduler.close(), "scheduler", "the scheduler is not running"),
    ],
    ids=["gateway-down", "store-closed", "scheduler-stopped"],
)
async def test_healthz_names_what_failed(
    ops: Ops, break_it: Callable[[Ops], Awaitable[None] | None], failed: str, reason: str
) -> None:
    if (pending := break_it(ops)) is not None:
        await pending
    status, body = await ops.health()
    assert status == 503
    assert body == {"status": "unhealthy", "failed": [failed], "reason": reason}


async def test_healthz_gives_up_on_a_store_that_hangs_and_lists_every_failure(tmp_path: Path) -> None:
    never = asyncio.Event()
    store = await JobStore.open(tmp_path / "ops.sqlite3")
    server = OpsServer(
        "127.0.0.1:0",
        metrics=Metrics(state_counts=store.count_by_state),
        gateway_ok=lambda: False,
        store_ping=never.wait,
        scheduler_running=lambda: False,
        store_ping_timeout_s=0.01,
    )
    # the timeout: a check that waited for the store forever would fail here, not hang
    async with (
        store,
        aiohttp.ClientSession() as http,
        server,
        asyncio.timeout(5),
        http.get(f"{server.url}/healthz") as resp,
    ):
        body = await resp.json()
    assert resp.status == 503
    assert body["failed"] == ["gateway", "store", "scheduler"]
    assert "the store did not answer within 0.01 s" in body["reason"] and "Traceback" not in json.dumps(body)


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        ("/", "GET", 404),
        ("/healthz/", "GET", 404),
        ("/metrics/extra", "GET", 404),
        ("/admin", "GET", 404),
        ("/healthz", "POST", 405),
        ("/metrics", "HEAD", 405),
    ],
)
async def test_nothing_else_is_served(ops: Ops, path: str, method: str, status: int) -> None:
    assert (await ops.get(path, method))[0] == status


async def test_no_listen_address_opens_nothing(ops: Ops) -> None:
    server = OpsServer(
        None, metrics=ops.metrics, gateway_ok=lambda: True, store_ping=ops.store.ping, scheduler_running=lambda: True
    )
    async with server:
        assert server.url is None


async def test_the_healthcheck_command_exits_by_the_answer(ops: Ops, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ops.server.url is not None
    listen = ops.server.url.removeprefix("http://")
    monkeypatch.setenv("DISCORD_TOKEN", "a-discord-token-for-the-test")
    monkeypatch.setenv("FAL_KEY", KEY)
    monkeypatch.setenv("FLUXPAINT_OPS__LISTEN", listen)
    # the probe is synchronous (urllib, as in Docker's HEALTHCHECK): off the loop that serves the endpoint
    assert await asyncio.to_thread(main, ["healthcheck"]) == 0
    ops.gateway["up"] = False
    assert await asyncio.to_thread(main, ["healthcheck"]) == 1
    healthy, said = await asyncio.to_thread(ask_healthz, listen)
    assert not healthy and json.loads(said)["failed"] == ["gateway"]


def test_the_probe_of_a_closed_port_says_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: the connection is refused
        healthy, said = ask_healthz(f"0.0.0.0:{port}", timeout_s=2)
    assert not healthy and json.loads(said)["status"] == "unreachable" and f"127.0.0.1:{port}" in said


def test_listen_addresses_split_into_host_and_port() -> None:
    assert split_listen("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert split_listen("[::1]:9108") == ("::1", 9108)


# /metrics: fal calls


async def test_fal_calls_are_counted_by_kind_and_status(ops: Ops, aiohttp_server: AiohttpServer) -> None:
    fake = await start_fake_fal(aiohttp_server, key=KEY, positions=[1, 0], rate_limit_count=1, drop_status_count=2)
    client = ops.fal(fake)
    handle, _ = await client.submit(payload())  # a 429 first, then taken
    statuses = [s.status async for s in client.watch(handle)]  # one dropped connection on the way
    await client.result(handle)
    assert await client.cancel(handle) == "already_completed"  # fal answers 400
    await client.upload(b"\x89PNG", "image/png", "input.png")  # initiate, then the PUT: two calls
    streamed = ops.fal(fake, status_mode="stream")
    handle2, _ = await streamed.submit(payload())
    assert [s.status async for s in streamed.watch(handle2)][-1] == "COMPLETED"

    samples = await ops.scrape()
    calls = {
        (dict(labels)["kind"], dict(labels)["status"]): value
        for (name, labels), value in samples.items()
        if name == "fluxpaint_fal_calls_total"
    }
    assert statuses[-1] == "COMPLETED"
    assert calls == {
        ("submit", "4xx"): 1,
        ("submit", "2xx"): 2,
        ("status", "error"): 1,
        ("status", "2xx"): fake.status_calls - 2,  # the fake counts both dropped tries (aiohttp re-sends one itself)
        ("result", "2xx"): 1,
        ("cancel", "4xx"): 1,
        ("upload", "2xx"): 2,
        ("stream", "2xx"): 1,
    }
    assert fake.errors == []


async def test_a_submit_that_times_out_counts_as_timeout(ops: Ops, aiohttp_server: AiohttpServer) -> None:
    fake = await start_fake_fal(aiohttp_server, key=KEY, hang_submit=True)
    with pytest.raises(FalSubmitUnknownError):
        await ops.fal(fake, submit_timeout_s=0.05).submit(payload())
    assert sample(await ops.scrape(), "fluxpaint_fal_calls_total", kind="submit", status="timeout") == 1


# /metrics: Discord


async def test_discord_429s_and_first_answers_are_seen_by_the_trace(ops: Ops, aiohttp_server: AiohttpServer) -> None:
    created_ms = 1_750_000_000_000
    interaction_id = (created_ms - DISCORD_EPOCH_MS) << 22

    async def limited(_request: web.Request) -> web.Response:
        return web.json_response({"retry_after": 1.0}, status=429, headers={"X-RateLimit-Scope": "user"})

    async def acknowledged(_request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_patch("/api/v10/webhooks/{app}/{token}/messages/{mid}", limited)
    app.router.add_post("/api/v10/channels/{cid}/messages", limited)
    app.router.add_post("/api/v10/interactions/{iid}/{token}/callback", acknowledged)
    server = await aiohttp_server(app)
    trace = budget_trace(RequestBudget(50), metrics=ops.metrics, wall_clock=lambda: created_ms / 1000 + 0.4)
    token = "aW50ZXJhY3Rpb246c2VjcmV0"
    async with aiohttp.ClientSession(trace_configs=[trace]) as discord:
        for method, path in [
            ("PATCH", f"/api/v10/webhooks/1/{token}/messages/@original"),
            ("PATCH", f"/api/v10/webhooks/1/{token}/messages/@original"),
            ("POST", "/api/v10/channels/9/messages"),
            ("POST", f"/api/v10/interactions/{interaction_id}/{token}/callback"),
        ]:
            async with discord.request(method, server.make_url(path)):
                pass

    samples = await ops.scrape()
    assert sample(samples, "fluxpaint_discord_429_total", route="webhook", scope="user") == 2
    assert sample(samples, "fluxpaint_discord_429_total", route="message", scope="user") == 1
    assert sample(samples, "fluxpaint_first_response_seconds_count") == 1
    assert sample(samples, "fluxpaint_first_response_seconds_sum") == pytest.approx(0.4)
    assert sample(samples, "fluxpaint_first_response_seconds_bucket", le="0.5") == 1
    assert sample(samples, "fluxpaint_first_response_seconds_bucket", le="0.25") == 0


# /metrics: jobs, the line, money and the pipeline's timings


async def test_jobs_by_state_are_read_from_the_store_at_each_scrape(ops: Ops) -> None:
    for state in (JobState.WAITING, JobState.WAITING, JobState.QUEUED, JobState.DONE):
        assert await ops.store.create(job(state))
    samples = await ops.scrape()
    jobs = {dict(labels)["state"]: value for (name, labels), value in samples.items() if name == "fluxpaint_jobs"}
    assert set(jobs) == {s.value for s in JobState}  # every state, 0 included: a series never vanishes
    assert (jobs["waiting"], jobs["queued"], jobs["done"], sum(jobs.values())) == (2, 1, 1, 4)
    assert sample(samples, "fluxpaint_line_length") == 2  # without a line_length: the jobs waiting

    await ops.store.create(job(JobState.WAITING))
    assert sample(await ops.scrape(), "fluxpaint_jobs", state="waiting") == 3  # read again, not cached


async def test_the_line_length_comes_from_its_callable_at_scrape_time(ops: Ops) -> None:
    line = [7]
    metrics = Metrics(state_counts=ops.store.count_by_state, line_length=lambda: line[0])
    server = OpsServer(
        "127.0.0.1:0",
        metrics=metrics,
        gateway_ok=lambda: True,
        store_ping=ops.store.ping,
        scheduler_running=lambda: True,
    )
    await ops.store.create(job(JobState.WAITING))
    async with server:
        ops.server = server
        assert sample(await ops.scrape(), "fluxpaint_line_length") == 7
        line[0] = 3
        assert sample(await ops.scrape(), "fluxpaint_line_length") == 3


async def test_a_store_that_does_not_answer_leaves_job_counts_out_but_serves_the_rest(ops: Ops) -> None:
    await ops.store.create(job(JobState.RUNNING))
    assert sample(await ops.scrape(), "fluxpaint_jobs", state="running") == 1
    ops.metrics.fal_call("status", "2xx")
    await ops.store.close()
    samples = await ops.scrape()
    assert not [key for key in samples if key[0] == "fluxpaint_jobs"]  # no stale counts
    assert sample(samples, "fluxpaint_fal_calls_total", kind="status", status="2xx") == 1


async def test_pipeline_hooks_fill_their_histograms_and_counters(ops: Ops) -> None:
    metrics = ops.metrics
    metrics.observe_queue_s(42.0)
    metrics.observe_run_s(6.5)
    metrics.observe_posted_s(1.5)
    metrics.observe_posted_s(-0.2)  # a wall clock that stepped back reads 0
    metrics.observe_run_s(float("nan"))  # dropped
    metrics.charged(GUILD_ID, 0.035)
    metrics.charged(GUILD_ID, 0.07)
    metrics.charged(None, 0.01)
    metrics.charged(GUILD_ID, 0.0)  # nothing charged: no sample change
    metrics.charged(GUILD_ID, -0.035)  # a refund is not a charge (a counter never goes down)
    metrics.charged(GUILD_ID, float("nan"))
    metrics.job_finished(JobState.DONE)
    metrics.job_finished(JobState.FAILED)
    metrics.job_finished(JobState.QUEUED)  # not a final state: ignored

    samples = await ops.scrape()
    assert sample(samples, "fluxpaint_fal_queue_seconds_bucket", le="60.0") == 1
    assert sample(samples, "fluxpaint_fal_queue_seconds_bucket", le="30.0") == 0
    assert sample(samples, "fluxpaint_fal_run_seconds_count") == 1
    assert sample(samples, "fluxpaint_completed_to_posted_seconds_count") == 2
    assert sample(samples, "fluxpaint_completed_to_posted_seconds_sum") == pytest.approx(1.5)
    assert sample(samples, "fluxpaint_charged_usd_total", guild=str(GUILD_ID)) == pytest.approx(0.105)
    assert sample(samples, "fluxpaint_charged_usd_total", guild="none") == pytest.approx(0.01)
    assert sample(samples, "fluxpaint_jobs_finished_total", state="done") == 1
    assert sample(samples, "fluxpaint_jobs_finished_total", state="failed") == 1
    assert sample(samples, "fluxpaint_jobs_finished_total", state="queued") is None


def _label_values(samples: Samples) -> Iterator[tuple[str, str]]:
    for _, labels in samples:
        yield from labels


async def test_labels_never_hold_a_job_a_user_or_a_request_id(ops: Ops, aiohttp_server: AiohttpServer) -> None:
    fake = await start_fake_fal(aiohttp_server, key=KEY, positions=[0])
    client = ops.fal(fake)
    handle, _ = await client.submit(payload())
    [_ async for _ in client.watch(handle)]
    stored = job(JobState.RUNNING)
    await ops.store.create(stored)
    ops.metrics.charged(GUILD_ID, 0.5)
    ops.metrics.discord_429()

    samples = await ops.scrape()
    names = {name for name, _ in _label_values(samples)}
    values = {value for _, value in _label_values(samples)}
    assert names <= ALLOWED_LABELS, names - ALLOWED_LABELS
    assert not values & {stored.id, str(USER_ID), handle.request_id, KEY}
    assert str(GUILD_ID) in values  # guilds are allowed: USD by guild


# the whole runtime (bot.cli.runtime) with ops.listen set


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_runtime_serves_health_and_metrics_of_a_real_job(make_rig: MakeRig) -> None:
    listen = f"127.0.0.1:{_free_port()}"  # ops.listen refuses port 0; a race for this port is only theoretical
    rig = await make_rig(fal={"positions": [1, 0]}, ops={"listen": listen})
    interaction = await rig.inpaint(fixture("coffee.png"), fixture("coffee_mask.png"))
    await rig.wait_text(interaction, "Inpainted", timeout=30)

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{listen}/healthz") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "ok"})
        # The result is posted a moment before the row says DONE, and the scheduler's next pass (its line length)
        # comes after the job's task ends: scrape until both are there, as Prometheus would, a bounded number of times.
        for _ in range(500):
            async with http.get(f"http://{listen}/metrics") as resp:
                samples = parse(await resp.text())
            if sample(samples, "fluxpaint_jobs", state="done") == 1 and sample(samples, "fluxpaint_line_length") == 0:
                break
        assert sample(samples, "fluxpaint_jobs", state="done") == 1  # the store's count_by_state
        assert sample(samples, "fluxpaint_line_length") == 0  # the scheduler's last pass
        assert sample(samples, "fluxpaint_jobs", state="waiting") == 0
        assert sample(samples, "fluxpaint_fal_calls_total", kind="submit", status="2xx") == 1
        assert (sample(samples, "fluxpaint_fal_calls_total", kind="result", status="2xx") or 0) >= 1
        assert sample(samples, "fluxpaint_first_response_seconds_count") == 1  # the /inpaint's acknowledgement
        # the pipeline's own hooks: fal's queue and run time, COMPLETED to posted, the charge by guild
        assert sample(samples, "fluxpaint_fal_queue_seconds_count") == 1
        assert sample(samples, "fluxpaint_fal_run_seconds_count") == 1
        assert sample(samples, "fluxpaint_completed_to_posted_seconds_count") == 1
        guild = str(rig.discord.guild_id)
        assert (sample(samples, "fluxpaint_charged_usd_total", guild=guild) or 0) > 0
        assert sample(samples, "fluxpaint_jobs_finished_total", state="done") == 1

        bot = rig.bot
        assert bot is not None
        await bot.ws.close(code=4000)  # the gateway drops: discord.py would reconnect, /healthz says so meanwhile
        async with http.get(f"http://{listen}/healthz") as resp:
            assert resp.status == 503 and (await resp.json())["failed"] == ["gateway"]
        await rig.stop()
        with pytest.raises(aiohttp.ClientConnectionError):  # the endpoint closes with the runtime
            async with http.get(f"http://{listen}/healthz"):
                pass
