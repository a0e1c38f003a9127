import pytest
from aiohttp import ClientSession, web
from pytest_aiohttp import AiohttpServer

from bot.downloads import DownloadError, DownloadTooLargeError, fetch, host_allowed


@pytest.mark.parametrize(
    ("url", "hosts", "allowed"),
    [
        ("https://cdn.discordapp.com/a.png", ["cdn.discordapp.com"], True),
        ("http://cdn.discordapp.com/a.png", ["cdn.discordapp.com"], False),
        ("https://evil.example/a.png", ["cdn.discordapp.com"], False),
        ("https://cdn.discordapp.com.evil.example/a.png", ["cdn.discordapp.com"], False),
        ("http://127.0.0.1:9000/a.png", ["127.0.0.1:9000"], True),
        ("http://127.0.0.1:9001/a.png", ["127.0.0.1:9000"], False),
        ("https://cdn.discordapp.com:8443/a.png", ["cdn.discordapp.com"], False),
    ],
    ids=["cdn", "plain-http", "other-host", "suffix-trick", "loopback-port", "wrong-port", "odd-port"],
)
def test_host_allow_list(url: str, hosts: list[str], allowed: bool) -> None:
    assert host_allowed(url, hosts) is allowed


@pytest.fixture
async def files_server(aiohttp_server: AiohttpServer) -> tuple[str, list[str]]:
    seen: list[str] = []

    async def small(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(body=b"12345")

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(100):
            await resp.write(b"x" * 1024)
        return resp

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("https://evil.example/x.png")

    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_get("/big", big)
    app.router.add_get("/redirect", redirect)
    server = await aiohttp_server(app)
    return f"127.0.0.1:{server.port}", seen


async def test_fetch_reads_within_cap(files_server: tuple[str, list[str]]) -> None:
    host, seen = files_server
    async with ClientSession() as session:
        data = await fetch(
            session, f"http://{host}/small", allowed_hosts=[host], max_bytes=10, timeout_s=5, what="image"
        )
    assert data == b"12345"
    assert seen == [""]


async def test_fetch_stops_at_the_cap_without_content_length(files_server: tuple[str, list[str]]) -> None:
    host, _ = files_server
    async with ClientSession() as session:
        with pytest.raises(DownloadTooLargeError, match="larger than the limit"):
            await fetch(
                session, f"http://{host}/big", allowed_hosts=[host], max_bytes=10_000, timeout_s=5, what="image"
            )


async def test_redirect_off_the_list_is_refused(files_server: tuple[str, list[str]]) -> None:
    host, _ = files_server
    async with ClientSession() as session:
        with pytest.raises(DownloadError, match="host this bot doesn't download from"):
            await fetch(
                session, f"http://{host}/redirect", allowed_hosts=[host], max_bytes=100, timeout_s=5, what="image"
            )
