"""How the fal client reads HTTP answers: capped bodies, server-sent events, and URL-free names for failures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp


class AnswerTooLargeError(aiohttp.ClientPayloadError):
    pass


@dataclass(frozen=True)
class FalAnswer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def data(self) -> object:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def is_model_answer(self) -> bool:
        """A stored answer from fal's runner (error type or validation list), not a passing gateway hiccup."""
        data = self.data()
        return "X-Fal-Error-Type" in self.headers or (
            isinstance(data, dict) and ("error_type" in data or isinstance(data.get("detail"), list))
        )


def describe_failure(exc: BaseException) -> str:
    """A short, URL-free name for a transport failure."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "could not connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return "the connection was dropped"
    if isinstance(exc, AnswerTooLargeError):
        return "the answer was too large"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off"
    return type(exc).__name__


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise AnswerTooLargeError("answer too large")
        chunks.append(chunk)
    return b"".join(chunks)


async def sse_data(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event; comment lines (fal's keep-alives) are skipped."""
    lines: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            if name == "data":
                lines.append(value.removeprefix(" "))
    if lines:
        yield "\n".join(lines)
