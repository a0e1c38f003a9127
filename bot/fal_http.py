"""How the fal client reads HTTP answers: capped bodies, server-sent events, URL-free names for failures, and the
count of calls by kind and outcome; it never sends a request itself."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol

import aiohttp

FalCallKind = Literal["submit", "status", "result", "cancel", "upload", "stream"]
FalCallStatus = Literal["2xx", "3xx", "4xx", "5xx", "error", "timeout"]


class FalCallCounter(Protocol):
    """Where the client reports each HTTP call it made (``bot.metrics.Metrics``)."""

    def fal_call(self, kind: FalCallKind, status: FalCallStatus) -> None: ...


STATUS_CLASSES: dict[int, FalCallStatus] = {2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def status_class(status: int) -> FalCallStatus:
    """``HTTP 429`` → ``"4xx"``: a bounded label; a status outside 200–599 counts as an error."""
    return STATUS_CLASSES.get(status // 100, "error")


class CallRecord:
    """Counts one HTTP call to fal once it ends: the answer's status class once its body is read, ``timeout`` or
    ``error`` when the transport failed. A call the bot itself stopped (a cancelled watch, a stream left on purpose)
    counts the answer it had, and nothing if it had none."""

    def __init__(self, counter: FalCallCounter | None, kind: FalCallKind) -> None:
        self._counter = counter
        self._kind = kind
        self.status: int | None = None

    def __enter__(self) -> CallRecord:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._counter is None:
            return
        outcome: FalCallStatus | None
        if isinstance(exc, TimeoutError):  # before ClientError: aiohttp's timeouts are both
            outcome = "timeout"
        elif isinstance(exc, Exception):
            outcome = "error"
        else:  # done, or stopped by the bot (CancelledError, GeneratorExit)
            outcome = None if self.status is None else status_class(self.status)
        if outcome is not None:
            self._counter.fal_call(self._kind, outcome)


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
