"""fal queue client (submit, status, watch, result, cancel, upload); sends the key to configured hosts only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import overload
from urllib.parse import quote, urlsplit

import aiohttp
from pydantic import ValidationError

from bot.config import FalSettings, app_id, is_loopback
from bot.fal_http import CallRecord, FalAnswer, FalCallCounter, FalCallKind, describe_failure, read_capped, sse_data
from bot.fal_models import (
    MAX_DETAIL_CHARS,
    URL_PATTERN,
    CancelAnswer,
    CancelOutcome,
    FalError,
    FalHandle,
    FalJobError,
    FalNotTakenError,
    FalRejectedError,
    FalSubmitUnknownError,
    FalTransientError,
    InpaintInput,
    InpaintOutput,
    QueueStatus,
    SegmentInput,
    SegmentOutput,
    SubmitAnswer,
    UploadSlot,
    describe_detail,
    no_retry_header,
    parse_retry_after,
    retry_delay,
)

log = logging.getLogger(__name__)

RETRY_BASE_S = 0.5
RETRY_CAP_S = 30.0
POLL_GROWTH = 1.5
STREAM_IDLE_MIN_S = 45.0  # fal sends a keep-alive comment every 15 s
MAX_ANSWER_BYTES = 8 * 1024 * 1024
SLOW_WATCH_S = 5.0  # a job whose caller can wait this long for news is looked at by status calls, not a stream

Pace = Callable[[QueueStatus], float]  # seconds the caller can go without news of a job in this status

# the client


class FalQueueClient:
    """fal's queue REST API over the caller's aiohttp session; every URL is built from the configured base."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: FalSettings,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        metrics: FalCallCounter | None = None,
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._settings = settings
        self._sleep = sleep
        self._rand = rand
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s, connect=settings.connect_timeout_s)

    def __repr__(self) -> str:
        return f"FalQueueClient(base_url={self._settings.base_url!r}, endpoint={self._settings.endpoint!r})"

    def handle_for(self, request_id: str, *, app: str | None = None) -> FalHandle:
        """The request's URLs on the configured base: ``{base}/{owner}/{app}/requests/{id}[/status|/cancel]``;
        ``app`` is another endpoint's ``owner/app`` (segmentation), else the inpainting endpoint's."""
        root = f"{self._settings.base_url}/{app or self._settings.app_id}/requests/{quote(request_id, safe='')}"
        return FalHandle(
            request_id=request_id,
            status_url=f"{root}/status",
            response_url=root,
            cancel_url=f"{root}/cancel",
            app_id=app,
        )

    def _own(self, handle: FalHandle) -> FalHandle:
        """``handle`` if all its URLs sit under the configured base, else the same request rebuilt there."""
        prefix = f"{self._settings.base_url}/"
        if all(url.startswith(prefix) for url in (handle.status_url, handle.response_url, handle.cancel_url)):
            return handle
        log.warning("request=%s had URLs off the configured fal base; rebuilt them", handle.request_id)
        return self.handle_for(handle.request_id, app=handle.app_id)

    def _safe(self, text: str) -> str:
        """Text from fal made fit for members: no key, no URLs, one line, bounded."""
        if key := self._settings.key.get_secret_value():
            text = text.replace(key, "[redacted]")
        text = " ".join(URL_PATTERN.sub("(a link)", text).split())
        return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"

    def _detail(self, reply: FalAnswer) -> str:
        detail = describe_detail(reply.data())
        return self._safe(detail) if detail else f"HTTP {reply.status}"

    def _key_refused(self, reply: FalAnswer) -> FalRejectedError:
        return FalRejectedError(
            f"fal refused this bot's API key ({self._detail(reply)}); "
            "the bot's owner needs to check fal.key and fal.auth_scheme."
        )

    async def _send(
        self,
        method: str,
        url: str,
        *,
        kind: FalCallKind,
        client_timeout: aiohttp.ClientTimeout,
        json_body: object = None,
        data: bytes | None = None,
        content_type: str | None = None,
        auth: bool = True,
        params: Mapping[str, str] | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> FalAnswer:
        headers = {"Accept": "application/json", **(extra_headers or {})}
        if auth:
            headers["Authorization"] = f"{self._settings.auth_scheme} {self._settings.key.get_secret_value()}"
        if content_type:
            headers["Content-Type"] = content_type
        with CallRecord(self._metrics, kind) as record:
            async with self._session.request(
                method,
                url,
                json=json_body,
                data=data,
                headers=headers,
                params=params,
                timeout=client_timeout,
                allow_redirects=False,  # a redirect could carry the key to another host
            ) as resp:
                answer = FalAnswer(resp.status, resp.headers, await read_capped(resp, MAX_ANSWER_BYTES))
                record.status = resp.status
                return answer

    async def _backoff(self, attempt: int, what: str, problem: str, retry_after: float | None) -> None:
        delay = retry_delay(attempt, base=RETRY_BASE_S, cap=RETRY_CAP_S, rand=self._rand(), retry_after=retry_after)
        log.warning(
            "fal %s: %s; retry %d of %d in %.1f s", what, problem, attempt + 1, self._settings.max_retries, delay
        )
        await self._sleep(delay)

    async def _call(
        self,
        method: str,
        url: str,
        *,
        kind: FalCallKind,
        what: str,
        final_5xx: bool = False,
        json_body: object = None,
        data: bytes | None = None,
        content_type: str | None = None,
        auth: bool = True,
        params: Mapping[str, str] | None = None,
    ) -> FalAnswer:
        """An idempotent request, retried on transport errors, 408, 429 and 5xx; returns the first other answer.

        With ``final_5xx`` a 5xx that fal's runner stored as the job's answer is returned, not retried.

        Raises:
            FalTransientError: still failing after ``max_retries`` retries.
        """
        problem = "no answer"
        for attempt in range(self._settings.max_retries + 1):
            retry_after = None
            try:
                reply = await self._send(
                    method,
                    url,
                    kind=kind,
                    client_timeout=self._timeout,
                    json_body=json_body,
                    data=data,
                    content_type=content_type,
                    auth=auth,
                    params=params,
                )
            except aiohttp.ClientSSLError as exc:
                raise FalTransientError("fal's TLS certificate was not accepted.") from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = describe_failure(exc)
            else:
                retryable = reply.status in (408, 429) or (
                    reply.status >= 500 and not (final_5xx and reply.is_model_answer())
                )
                if not retryable or no_retry_header(reply.headers):
                    return reply
                problem = f"HTTP {reply.status}"
                retry_after = parse_retry_after(reply.headers.get("Retry-After"))
            if attempt < self._settings.max_retries:
                await self._backoff(attempt, what, problem, retry_after)
        raise FalTransientError(f"fal could not be reached while {what} ({problem}); it may work again in a minute.")

    # submit

    async def submit(
        self, payload: InpaintInput | SegmentInput, *, endpoint: str | None = None
    ) -> tuple[FalHandle, QueueStatus]:
        """Send the job once, to ``endpoint`` (default: the configured inpainting one); retried only when it certainly
        did not reach fal (no connection, 429, 503).

        Raises:
            FalSubmitUnknownError: sent but unanswered (timeout, dropped connection, unreadable answer).
            FalRejectedError: a 4xx, such as a 422 validation list or a refused key.
            FalTransientError: fal could not be reached or did not accept the job; nothing was sent.
        """
        url = f"{self._settings.base_url}/{endpoint or self._settings.endpoint}"
        app = None if endpoint is None else app_id(endpoint)
        # megabytes of data URIs: encoded off the event loop, like every other byte-crunching step
        body = await asyncio.to_thread(_json_bytes, payload)
        # fal drops a job that has not started by then (504, timeout type "user"); the bot's own deadline covers
        # the run as well and cancels the job at fal when it passes
        deadline = {"X-Fal-Request-Timeout": str(math.ceil(self._settings.job_timeout_s))}
        timeout = aiohttp.ClientTimeout(total=self._settings.submit_timeout_s, connect=self._settings.connect_timeout_s)
        problem = "no answer"
        for attempt in range(self._settings.max_retries + 1):
            retry_after = None
            try:
                reply = await self._send(
                    "POST",
                    url,
                    kind="submit",
                    data=body,
                    content_type="application/json",
                    client_timeout=timeout,
                    extra_headers=deadline,
                )
            except aiohttp.ClientSSLError as exc:
                raise FalNotTakenError("fal's TLS certificate was not accepted, so the job was not sent.") from exc
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                problem = describe_failure(exc)  # no connection: not a byte of the job left this machine
            except (aiohttp.ClientError, TimeoutError) as exc:
                # a read timeout or a dropped connection after sending may already be a paid job
                log.error("fal submit unanswered (%s); not re-sent", describe_failure(exc))
                raise FalSubmitUnknownError(
                    "fal did not answer when the job was sent, so it may still run and be billed; "
                    "it was not sent again."
                ) from exc
            else:
                # a 429, or a 503 that names no request, means fal did not take the job
                if not (reply.status == 429 or (reply.status == 503 and "x-fal-request-id" not in reply.headers)):
                    return self._submitted(reply, app)
                problem = f"HTTP {reply.status}"
                if no_retry_header(reply.headers):
                    break
                retry_after = parse_retry_after(reply.headers.get("Retry-After"))
            if attempt < self._settings.max_retries:
                await self._backoff(attempt, "submit", problem, retry_after)
        raise FalNotTakenError(
            f"fal did not accept the job ({problem}), so nothing was sent or charged; "
            "please try again in a few minutes."
        )

    def _submitted(self, reply: FalAnswer, app: str | None) -> tuple[FalHandle, QueueStatus]:
        if reply.ok:
            try:
                answer = SubmitAnswer.model_validate_json(reply.body)
            except ValidationError as exc:
                log.error("fal submit answer unreadable; not re-sent")
                raise FalSubmitUnknownError(
                    "fal's answer to the job could not be read, so the bot cannot follow it; "
                    "it may still run and be billed."
                ) from exc
            if answer.status_url and not answer.status_url.startswith(f"{self._settings.base_url}/"):
                log.info(
                    "request=%s: fal answered with URLs on %s; using the configured base",
                    answer.request_id,
                    urlsplit(answer.status_url).hostname,
                )
            position = answer.queue_position if answer.status == "IN_QUEUE" else None
            handle = self.handle_for(answer.request_id, app=app)
            return handle, QueueStatus(status=answer.status, queue_position=position)
        if reply.status in (401, 403):
            raise self._key_refused(reply)
        if 300 <= reply.status < 500:
            raise FalRejectedError(f"fal rejected the request: {self._detail(reply)}")
        if reply.status in (502, 504):  # a gateway gave up: the job behind it may have been taken
            log.error("fal submit answered HTTP %s; not re-sent", reply.status)
            raise FalSubmitUnknownError(
                f"fal's gateway failed (HTTP {reply.status}) after the job was sent, so it may still run and be "
                "billed; it was not sent again."
            )
        raise FalTransientError(
            f"fal could not accept the job (HTTP {reply.status}); nothing was charged. Please try again in a minute."
        )

    # follow

    async def status(self, handle: FalHandle, *, logs: bool = False) -> QueueStatus:
        """One status check (fal answers 202 while waiting, 200 once COMPLETED).

        Raises:
            FalJobError: fal does not know the request (404).
            FalRejectedError: the key was refused, or the route is refused (4xx).
            FalTransientError: unreachable or unreadable after the retries.
        """
        handle = self._own(handle)
        params = {"logs": "1"} if logs else None
        reply = await self._call(
            "GET", handle.status_url, kind="status", what="checking the job's status", params=params
        )
        if reply.status == 404:
            raise FalJobError("fal no longer knows this job; it may have expired.")
        if reply.status in (401, 403):
            raise self._key_refused(reply)
        if not reply.ok:
            raise FalRejectedError(f"fal refused the status check ({self._detail(reply)}).")
        try:
            return QueueStatus.model_validate_json(reply.body)
        except ValidationError as exc:
            raise FalTransientError("fal sent a status this bot could not read.") from exc

    async def watch(self, handle: FalHandle, pace: Pace | None = None) -> AsyncIterator[QueueStatus]:
        """Statuses as they change, ending with COMPLETED: the SSE stream, or polling when it is off or fails.

        ``pace`` says, for each status, how long the caller can go without news: a job far back in fal's queue
        leaves its stream (a thousand of them cost a core in events alone) and is looked at that often instead.

        Raises:
            FalJobError: fal completed the job with an error.
            FalTransientError, FalRejectedError: as ``status``.
        """
        handle = self._own(handle)
        last: tuple[str, int | None] | None = None
        completed: QueueStatus | None = None
        streaming = self._settings.status_mode == "stream"
        interval = self._settings.poll_interval_s
        wait = 0.0  # how long the caller can go without news now
        while completed is None:
            if streaming and wait < SLOW_WATCH_S:
                streaming = False  # unless the stream is left on purpose, it failed: poll from now on
                async with contextlib.aclosing(self._stream(handle)) as events:
                    async for status in events:
                        if status.status == "COMPLETED":
                            completed = status
                            break
                        if status.progress != last:
                            last = status.progress
                            yield status
                        if pace is not None and (wait := pace(status)) >= SLOW_WATCH_S:
                            streaming = True  # far back: look again later, by one status call
                            break
                if completed is not None:
                    break
            if wait >= SLOW_WATCH_S:
                await self._sleep(wait)
            status = await self.status(handle)
            if status.status == "COMPLETED":
                completed = status
                break
            if pace is not None:
                wait = pace(status)
            if status.progress != last:
                last = status.progress
                interval = self._settings.poll_interval_s
                yield status
            else:
                interval = min(interval * POLL_GROWTH, self._settings.max_poll_interval_s)
            if wait < SLOW_WATCH_S and not streaming:
                await self._sleep(interval)
        if completed.error is not None or completed.error_type is not None:
            raise await self._failure(handle, completed)
        yield completed

    async def _stream(self, handle: FalHandle) -> AsyncGenerator[QueueStatus]:
        """Statuses from ``{status_url}/stream``; ends quietly when the stream is refused, drops or goes bad."""
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self._settings.connect_timeout_s,
            sock_read=max(self._settings.request_timeout_s, STREAM_IDLE_MIN_S),
        )
        headers = {
            "Accept": "text/event-stream",
            "Authorization": f"{self._settings.auth_scheme} {self._settings.key.get_secret_value()}",
        }
        try:
            with CallRecord(self._metrics, "stream") as record:
                async with self._session.get(
                    f"{handle.status_url}/stream", headers=headers, timeout=timeout, allow_redirects=False
                ) as resp:
                    record.status = resp.status
                    if resp.status != 200:
                        log.info("request=%s: status stream refused (HTTP %s); polling", handle.request_id, resp.status)
                        return
                    async for data in sse_data(resp.content):
                        try:
                            status = QueueStatus.model_validate_json(data)
                        except ValidationError:
                            log.warning("request=%s: unreadable status event; polling", handle.request_id)
                            return
                        yield status
                        if status.status == "COMPLETED":
                            return
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("request=%s: status stream failed (%s); polling", handle.request_id, describe_failure(exc))
            return
        log.info("request=%s: status stream ended early; polling", handle.request_id)

    async def _failure(self, handle: FalHandle, completed: QueueStatus) -> FalError:
        """The reason for a COMPLETED-with-error: the result call carries fal's detail, the status a summary."""
        try:
            await self.result(handle)
        except (FalJobError, FalRejectedError) as exc:
            return FalJobError(exc.message)
        except FalTransientError:
            pass  # the result call could not say more; the status's own summary is what we have
        reason = self._safe(completed.error or completed.error_type or "no reason given")
        return FalJobError(f"fal could not finish this job: {reason}")

    @overload
    async def result(self, handle: FalHandle) -> InpaintOutput: ...

    @overload
    async def result(self, handle: FalHandle, output: type[SegmentOutput]) -> SegmentOutput: ...

    async def result(
        self, handle: FalHandle, output: type[InpaintOutput] | type[SegmentOutput] = InpaintOutput
    ) -> InpaintOutput | SegmentOutput:
        """The output of a COMPLETED job; fetch it promptly, fal keeps it for a limited time.

        Raises:
            FalJobError: the job failed (422, a runner error), was cancelled, or its result is gone.
            FalRejectedError: the key was refused.
            FalTransientError: unreachable after the retries.
        """
        handle = self._own(handle)
        reply = await self._call("GET", handle.response_url, kind="result", what="fetching the result", final_5xx=True)
        if reply.ok:
            try:
                return output.model_validate_json(reply.body)
            except ValidationError as exc:
                raise FalJobError("fal returned a result this bot cannot read.") from exc
        detail = self._detail(reply)
        data = reply.data()
        error_type = (data.get("error_type") if isinstance(data, dict) else None) or reply.headers.get(
            "X-Fal-Error-Type"
        )
        if reply.status in (401, 403):
            raise self._key_refused(reply)
        if reply.status in (404, 410):
            raise FalJobError(
                "fal no longer has this job's result: fal keeps results only for a short time after a job ends."
            )
        if reply.status == 400 and "in progress" in detail.lower():
            raise FalTransientError("fal has not finished this job yet.")
        if reply.status == 499 or error_type in ("client_cancelled", "client_disconnected"):
            raise FalJobError("The job was cancelled at fal.")
        if reply.status == 422:
            raise FalJobError(f"fal rejected the input: {detail}")
        if reply.status >= 500:
            raise FalJobError(f"fal could not run this job ({error_type or f'HTTP {reply.status}'}): {detail}")
        raise FalJobError(f"fal could not run this job: {detail}")

    async def cancel(self, handle: FalHandle) -> CancelOutcome:
        """Ask fal to cancel; best effort: a running job may still finish and bill.

        Raises:
            FalRejectedError: the key or the route was refused.
            FalTransientError: unreachable after the retries.
        """
        handle = self._own(handle)
        reply = await self._call("PUT", handle.cancel_url, kind="cancel", what="cancelling the job")
        try:
            answer = CancelAnswer.model_validate_json(reply.body)
        except ValidationError:
            answer = CancelAnswer()
        said = (answer.status or "").upper()
        if reply.ok:
            if said == "ALREADY_COMPLETED" or answer.success is False:
                return "already_completed"
            return "not_found" if said == "NOT_FOUND" else "cancelled"
        if reply.status == 400:
            return "already_completed"
        if reply.status == 404:
            return "not_found"
        if reply.status in (401, 403):
            raise self._key_refused(reply)
        raise FalRejectedError(f"fal did not accept the cancel request ({self._detail(reply)}).")

    # storage

    async def upload(self, data: bytes, content_type: str, filename: str) -> str:
        """Put ``data`` on fal's CDN (initiate at ``rest_base_url``, then an unauthenticated PUT); returns its URL.

        Raises:
            FalRejectedError: refused, or a proxy key would go to another host.
            FalTransientError: unreachable after the retries, or an unusable answer.
        """
        settings = self._settings
        if (
            settings.auth_scheme == "Bearer"
            and urlsplit(settings.rest_base_url).netloc != urlsplit(settings.base_url).netloc
        ):
            raise FalRejectedError("Uploads need a direct fal key; turn off fal.upload_inputs when using a proxy.")
        reply = await self._call(
            "POST",
            f"{settings.rest_base_url}/storage/upload/initiate?storage_type=fal-cdn-v3",
            kind="upload",
            what="preparing an upload",
            json_body={"content_type": content_type, "file_name": filename},
        )
        if reply.status in (401, 403):
            raise self._key_refused(reply)
        if not reply.ok:
            raise FalRejectedError(f"fal refused the upload ({self._detail(reply)}).")
        try:
            slot = UploadSlot.model_validate_json(reply.body)
        except ValidationError as exc:
            raise FalTransientError("fal's upload answer could not be read.") from exc
        target = urlsplit(slot.upload_url)
        if not (target.scheme == "https" or (target.scheme == "http" and is_loopback(target.hostname))):
            raise FalTransientError("fal offered an upload address this bot does not use.")
        reply = await self._call(
            "PUT",
            slot.upload_url,
            kind="upload",
            what="uploading an image",
            data=data,
            content_type=content_type,
            auth=False,
        )
        if not reply.ok:
            raise FalTransientError(f"fal's storage refused the upload (HTTP {reply.status}).")
        return slot.file_url


def _json_bytes(payload: InpaintInput | SegmentInput) -> bytes:
    return json.dumps(payload.to_wire(), separators=(",", ":")).encode()
