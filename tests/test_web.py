"""The mask painter over HTTP: links, single use, the body cap, the headers, and nothing else served (SPEC 12)."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from PIL import Image
from pydantic import SecretStr
from pytest_aiohttp import AiohttpClient

from bot.config import WebSettings
from bot.errors import InputError
from bot.paint_links import (
    SECRET_FILE,
    PaintGrant,
    PaintLinks,
    PaintSecretError,
    UsedLinkError,
    load_or_create_secret,
)
from bot.web import PaintServer

SECRET = b"k" * 32
JOB = "0123456789abcdef0123456789abcdef"
MEMBER = 123456789012345678
START = 1_700_000_000.0
TTL_S = 900.0
CAP = 64 * 1024
RECEIVED = "Mask received: the job continues in #general."
HEADERS = {
    "Content-Security-Policy": "default-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
Client = TestClient[aiohttp.web.Request, aiohttp.web.Application]


def png(size: tuple[int, int] = (64, 48), colour: int = 0) -> bytes:
    out = io.BytesIO()
    Image.new("L", size, colour).save(out, "PNG")
    return out.getvalue()


IMAGE = png((64, 48), 128)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class RecordingJobs:
    """A PaintJobs whose jobs wait for one mask each; it records the masks it takes."""

    def __init__(self, *waiting: str) -> None:
        self.waiting = set(waiting)
        self.masks: list[tuple[PaintGrant, bytes]] = []
        self.submits = 0
        self.refuse: str | None = None  # the next masks are refused with this InputError
        self.image_type = "image/png"
        self.entered = asyncio.Event()
        self.release: asyncio.Event | None = None  # set: submit_mask waits for it

    async def image(self, grant: PaintGrant) -> tuple[bytes, str] | None:
        return (IMAGE, self.image_type) if grant.job_id in self.waiting else None

    async def submit_mask(self, grant: PaintGrant, png: bytes) -> str:
        self.submits += 1
        self.entered.set()
        if self.release is not None:
            await self.release.wait()
        if grant.job_id not in self.waiting:
            raise UsedLinkError()
        if self.refuse is not None:
            raise InputError(self.refuse)
        self.waiting.discard(grant.job_id)
        self.masks.append((grant, png))
        return RECEIVED


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def links(clock: Clock) -> PaintLinks:
    return PaintLinks(SECRET, ttl_s=TTL_S, public_url="https://paint.example.org/", clock=clock)


@pytest.fixture
def settings() -> WebSettings:
    return WebSettings(enabled=True, public_url="https://paint.example.org", max_mask_bytes=CAP)


@pytest.fixture
def jobs() -> RecordingJobs:
    return RecordingJobs(JOB)


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, settings: WebSettings, links: PaintLinks, jobs: RecordingJobs
) -> Client:
    return await aiohttp_client(PaintServer(settings, links, jobs).app)


@pytest.fixture
def token(links: PaintLinks) -> str:
    return links.token(JOB, MEMBER)


def recode(token: str, change: Callable[[bytearray], None]) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    change(raw)
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def flip(index: int) -> Callable[[bytearray], None]:
    def change(raw: bytearray) -> None:
        raw[index] ^= 0x01

    return change


async def post_mask(client: Client, token: str, body: bytes | None = None) -> aiohttp.ClientResponse:
    return await client.post(
        f"/paint/{token}", data=png() if body is None else body, headers={"Content-Type": "image/png"}
    )


async def test_link_is_the_public_url_and_carries_the_grant(links: PaintLinks) -> None:
    link = links.link(JOB, MEMBER)
    assert link.startswith("https://paint.example.org/paint/")
    assert links.verify(link.rsplit("/", 1)[1]) == PaintGrant(JOB, MEMBER, int(START + TTL_S))


@pytest.mark.parametrize(("job_id", "user_id"), [("0123", MEMBER), (JOB.upper(), MEMBER), (JOB, -1)])
def test_link_refuses_what_is_not_a_job_or_member(links: PaintLinks, job_id: str, user_id: int) -> None:
    with pytest.raises(ValueError):
        links.token(job_id, user_id)


async def test_good_link_serves_the_page_the_image_and_takes_the_mask(
    client: Client, token: str, jobs: RecordingJobs
) -> None:
    page = await client.get(f"/paint/{token}")
    assert page.status == 200 and page.content_type == "text/html"
    text = await page.text()
    assert 'id="canvas"' in text and 'src="static/paint.js"' in text and token not in text
    image = await client.get(f"/paint/{token}/image")
    assert image.status == 200 and image.content_type == "image/png" and await image.read() == IMAGE
    mask = png(colour=255)
    answer = await post_mask(client, token, mask)
    assert answer.status == 200 and await answer.json() == {"message": RECEIVED}
    assert jobs.masks == [(PaintGrant(JOB, MEMBER, int(START + TTL_S)), mask)]


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
FORGERIES = {
    "mac": lambda token: recode(token, flip(-1)),
    "job id": lambda token: recode(token, flip(0)),
    "member": lambda token: recode(token, flip(20)),
    "expiry": lambda token: recode(token, flip(30)),
    "other key": lambda _: PaintLinks(b"o" * 32, ttl_s=TTL_S, public_url="https://x.example").token(JOB, MEMBER),
    "other spelling": lambda token: token[:-1] + B64[B64.index(token[-1]) | 1],  # an unused low bit set
    "truncated": lambda token: token[:-1],
    "padded": lambda token: token + "=",
    "not base64": lambda token: "*" + token[1:],
    "word": lambda _: "static",
}


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
async def test_forged_link_is_403_everywhere_and_changes_nothing(
    client: Client, token: str, jobs: RecordingJobs, forge: Callable[[str], str]
) -> None:
    forged = forge(token)
    page = await client.get(f"/paint/{forged}")
    assert page.status == 403 and page.content_type == "text/html"
    assert "not valid" in await page.text()
    image = await client.get(f"/paint/{forged}/image")
    assert image.status == 403 and "not valid" in (await image.json())["error"]
    posted = await post_mask(client, forged)
    assert posted.status == 403
    assert jobs.submits == 0 and jobs.masks == []
    assert (await post_mask(client, token)).status == 200  # the genuine link still works


async def test_expired_link_is_410_and_changes_nothing(
    client: Client, token: str, clock: Clock, jobs: RecordingJobs
) -> None:
    clock.now = START + TTL_S - 1
    assert (await client.get(f"/paint/{token}")).status == 200
    clock.now = START + TTL_S
    page = await client.get(f"/paint/{token}")
    assert page.status == 410 and "expired" in await page.text()
    assert (await client.get(f"/paint/{token}/image")).status == 410
    posted = await post_mask(client, token)
    assert posted.status == 410 and "expired" in (await posted.json())["error"]
    assert jobs.submits == 0


async def test_replayed_link_is_410_before_it_reaches_the_jobs(client: Client, token: str, jobs: RecordingJobs) -> None:
    assert (await post_mask(client, token)).status == 200
    jobs.waiting.add(JOB)  # even were the jobs side to take a second mask, this process refuses the replay
    again = await post_mask(client, token)
    assert again.status == 410 and "used already" in (await again.json())["error"]
    assert (await client.get(f"/paint/{token}")).status == 410
    assert (await client.get(f"/paint/{token}/image")).status == 410
    assert jobs.submits == 1 and len(jobs.masks) == 1


async def test_job_that_no_longer_waits_is_410(client: Client, token: str, jobs: RecordingJobs) -> None:
    jobs.waiting.clear()  # used in an earlier process, cancelled, expired or pruned
    image = await client.get(f"/paint/{token}/image")
    assert image.status == 410 and "no longer waits" in (await image.json())["error"]
    posted = await post_mask(client, token)
    assert posted.status == 410 and "no longer waits" in (await posted.json())["error"]
    assert (await post_mask(client, token)).status == 410 and jobs.submits == 1  # remembered, not asked again


async def test_unusable_mask_is_422_with_the_reason_and_may_be_sent_again(
    client: Client, token: str, jobs: RecordingJobs
) -> None:
    jobs.refuse = "The mask selects nothing: paint over the part to repaint."
    refused = await post_mask(client, token)
    assert refused.status == 422 and await refused.json() == {"error": jobs.refuse}
    assert jobs.masks == []
    jobs.refuse = None
    assert (await post_mask(client, token)).status == 200 and len(jobs.masks) == 1


async def test_second_submit_while_the_first_is_answered_is_409(
    client: Client, token: str, jobs: RecordingJobs
) -> None:
    jobs.release = asyncio.Event()
    first = asyncio.create_task(post_mask(client, token))
    await jobs.entered.wait()
    async with asyncio.timeout(10):  # a second submit let through would wait for the first one's release
        second = await post_mask(client, token)
    assert second.status == 409 and "already" in (await second.json())["error"]
    jobs.release.set()
    assert (await first).status == 200
    assert jobs.submits == 1


async def test_mask_over_the_cap_is_413_by_its_length_and_nothing_is_taken(
    client: Client, token: str, jobs: RecordingJobs
) -> None:
    answer = await post_mask(client, token, b"\x89PNG\r\n\x1a\n" + bytes(CAP))
    assert answer.status == 413 and "larger than 64 KiB" in (await answer.json())["error"]
    assert jobs.submits == 0


async def test_mask_over_the_cap_is_refused_without_waiting_for_its_body(
    client: Client, token: str, jobs: RecordingJobs
) -> None:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    head = f"POST /paint/{token} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {100 * CAP}\r\n\r\n"
    writer.write(head.encode() + b"\x89PNG\r\n\x1a\n")  # then nothing more: a reader of the body would hang
    try:
        async with asyncio.timeout(10):
            status = await reader.readline()
    finally:
        writer.close()
    assert status.startswith(b"HTTP/1.1 413") and jobs.submits == 0


async def test_streamed_mask_over_the_cap_is_413(client: Client, token: str, jobs: RecordingJobs) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse it by
        yield b"\x89PNG\r\n\x1a\n"
        for _ in range(CAP // 4096 + 1):
            yield bytes(4096)

    answer = await client.post(f"/paint/{token}", data=chunks(), headers={"Content-Type": "image/png"})
    assert answer.status == 413 and jobs.submits == 0


async def test_mask_of_exactly_the_cap_is_taken(client: Client, token: str, jobs: RecordingJobs) -> None:
    body = png() + bytes(CAP - len(png()))  # trailing bytes after IEND: still a PNG, judged by the jobs side
    assert (await post_mask(client, token, body)).status == 200 and jobs.masks[0][1] == body


@pytest.mark.parametrize(
    ("content_type", "body", "status", "words"),
    [
        ("text/plain", png(), 415, "Content-Type image/png"),
        ("multipart/form-data; boundary=x", png(), 415, "Content-Type image/png"),
        ("image/png", b"GIF89a not a png", 422, "not a PNG"),
        ("image/png", b"", 422, "not a PNG"),
    ],
    ids=["text", "form", "gif bytes", "empty"],
)
async def test_wrong_content_is_refused_and_nothing_is_taken(
    client: Client, token: str, jobs: RecordingJobs, content_type: str, body: bytes, status: int, words: str
) -> None:
    answer = await client.post(f"/paint/{token}", data=body, headers={"Content-Type": content_type})
    assert answer.status == status and words in (await answer.json())["error"]
    assert jobs.submits == 0
    assert (await post_mask(client, token)).status == 200  # not burnt


async def test_failure_on_the_jobs_side_is_500_says_nothing_and_keeps_the_link(
    client: Client, token: str, jobs: RecordingJobs, caplog: pytest.LogCaptureFixture
) -> None:
    jobs.image_type = "image/svg+xml"  # a page of script, were it served
    with caplog.at_level(logging.ERROR, logger="bot.web"):
        answer = await client.get(f"/paint/{token}/image")
    assert answer.status == 500 and "our side" in (await answer.json())["error"]
    assert "svg" not in await answer.text() and "svg" in caplog.text and token not in caplog.text
    assert (await post_mask(client, token)).status == 200


def routes(token: str) -> list[tuple[str, str, int]]:
    return [
        ("GET", f"/paint/{token}", 200),
        ("GET", f"/paint/{token}/image", 200),
        ("POST", f"/paint/{token}", 200),
        ("GET", "/paint/static/paint.js", 200),
        ("GET", "/paint/static/paint.css", 200),
        ("GET", "/health", 200),
        ("GET", f"/paint/{token[:-2]}", 403),
        ("GET", f"/paint/{token[:-2]}/image", 403),
        ("GET", "/", 404),
        ("GET", "/paint/static/paint.html", 404),
        ("POST", "/health", 405),
    ]


async def test_every_route_sets_the_security_headers(client: Client, token: str) -> None:
    for method, path, status in routes(token):
        answer = await client.request(method, path, data=png(), headers={"Content-Type": "image/png"})
        assert answer.status == status, path
        assert {name: answer.headers.get(name) for name in HEADERS} == HEADERS, path
        if token[:8] in path:
            assert answer.headers["Cache-Control"] == "no-store", path


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/paint",
        "/paint/",
        "/paint/{token}/",
        "/paint/{token}/image/x",
        "/paint/{token}/mask",
        "/paint/static/paint.html",
        "/paint/static/../static/paint.js/x",
        "/paint/static/",
        "/static/paint.js",
        "/favicon.ico",
        "/healthz",
        "/metrics",
    ],
)
async def test_any_other_path_is_404(client: Client, token: str, path: str) -> None:
    answer = await client.get(path.format(token=token))
    assert answer.status == 404
    assert answer.headers["Content-Security-Policy"] == "default-src 'self'"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/paint/{token}"),
        ("DELETE", "/paint/{token}"),
        ("PATCH", "/paint/{token}"),
        ("POST", "/paint/{token}/image"),
        ("PUT", "/paint/{token}/image"),
        ("POST", "/paint/static/paint.js"),
        ("POST", "/health"),
    ],
)
async def test_wrong_method_is_405_and_changes_nothing(
    client: Client, token: str, jobs: RecordingJobs, method: str, path: str
) -> None:
    answer = await client.request(method, path.format(token=token), data=png(), headers={"Content-Type": "image/png"})
    assert answer.status == 405 and jobs.submits == 0


async def test_static_files_are_revalidated_by_etag(client: Client) -> None:
    script = await client.get("/paint/static/paint.js")
    assert script.content_type == "text/javascript" and "paintReady" in await script.text()
    again = await client.get("/paint/static/paint.js", headers={"If-None-Match": script.headers["ETag"]})
    assert again.status == 304 and again.headers["Cache-Control"] == "no-cache"
    style = await client.get("/paint/static/paint.css")
    assert style.content_type == "text/css" and "touch-action: none" in await style.text()
    assert await (await client.get("/health")).text() == "ok"


async def test_tokens_and_secrets_stay_out_of_logs_and_reprs(
    settings: WebSettings, links: PaintLinks, jobs: RecordingJobs, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = PaintServer(settings, links, jobs)
    assert SECRET.decode() not in repr(links) + repr(server)
    port = free_port()
    listen = settings.model_copy(update={"listen": f"127.0.0.1:{port}"})
    with caplog.at_level(logging.DEBUG):
        async with PaintServer(listen, links, jobs), aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{port}"
            async with session.get(f"{base}/paint/{token}/image") as answer:
                assert answer.status == 200
            async with session.post(f"{base}/paint/{token}", data=png(), headers={"Content-Type": "image/png"}) as a:
                assert a.status == 200
            async with session.get(f"{base}/paint/{token[:-1]}x") as answer:
                assert answer.status == 403
    assert f"/paint/{token[:8]}…/image 200" in caplog.text  # the access log, cut
    assert token[:12] not in caplog.text and SECRET.decode() not in caplog.text
    assert f"job={JOB} user={MEMBER}" in caplog.text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_secret_is_made_once_kept_0600_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = load_or_create_secret(data, None)
    kept = data / SECRET_FILE
    assert len(first) == 32 and kept.read_bytes() == first
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert load_or_create_secret(data, None) == first
    assert sorted(p.name for p in data.iterdir()) == [SECRET_FILE]  # no temp file left
    before = PaintLinks(first, ttl_s=TTL_S, public_url="https://x.example").token(JOB, MEMBER)
    after = PaintLinks(load_or_create_secret(data, None), ttl_s=TTL_S, public_url="https://x.example")
    assert after.verify(before).job_id == JOB  # links survive a restart


def test_configured_secret_wins_and_no_file_is_made(tmp_path: Path) -> None:
    assert load_or_create_secret(tmp_path, SecretStr("a configured key of 32 characters")) == (
        b"a configured key of 32 characters"
    )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PaintSecretError, match="at least 16"):
        load_or_create_secret(tmp_path, SecretStr("short"))


def test_damaged_secret_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_bytes(b"too short")
    with pytest.raises(PaintSecretError, match="damaged"):
        load_or_create_secret(tmp_path, None)
    assert (tmp_path / SECRET_FILE).read_bytes() == b"too short"


def test_secret_file_readable_by_others_is_tightened(tmp_path: Path) -> None:
    kept = tmp_path / SECRET_FILE
    kept.write_bytes(bytes(range(32)))
    os.chmod(kept, 0o644)
    assert load_or_create_secret(tmp_path, None) == bytes(range(32))
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
