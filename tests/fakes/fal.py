"""A fake fal queue (submit, status, SSE stream, result, cancel, storage, media) on loopback; it never calls out.

It speaks the wire format of ``/work/shared/reference/fal.md``: submit on ``POST /{owner}/{app}/{path}``, the
request under ``/{owner}/{app}/requests/{id}`` (``/status``, ``/status/stream``, ``/cancel``), 202 while waiting and
200 once COMPLETED, failures as COMPLETED with ``error`` and the reason on the result call.

Progression: each job follows a script, ``IN_QUEUE`` at each of ``positions``, then ``in_progress_steps`` times
``IN_PROGRESS``, then ``COMPLETED``. With ``auto_advance`` (the default) every answered status call (or stream
event) shows the current step and then moves to the next, so the n-th status call sees step n; without it the
job moves only through ``advance(request_id)``/``complete(request_id)``. While ``hold`` is an unset
``asyncio.Event`` no job moves on its own (``release()`` sets it). Faults are counted per fake, so they are
deterministic; ``status_5xx_rate`` draws from a ``random.Random(seed)``.

Submits are checked against fal's published input schema of the endpoint (``tests.specs.fal_rules``) and refused
as fal does, 422 with pydantic's ``detail`` list; ``refused`` keeps them, so a test can assert that fal would have
taken every body. It is stricter than fal's lax pydantic in one way only: numbers and booleans sent as strings are
refused.

In tests::

    fake = await start_fake_fal(aiohttp_server, positions=[2, 1, 0])
    settings = FalSettings(key=fake.key, base_url=fake.base_url, media_hosts=[fake.media_host])

Standalone, for a subprocess rig: ``fake, runner = await serve_fake_fal("127.0.0.1", 8123, hold=True)`` (stop with
``await runner.cleanup()``), or ``python -m tests.fakes.fal --port 8123 --knobs '{"hold": true}'``. Routes under
``/_fake/`` (``GET state``, ``POST release``, ``POST hold``, ``POST advance/{id}``, ``POST complete/{id}``) steer a
fake running in another process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import io
import itertools
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from PIL import Image, ImageDraw

from tests.specs.fal_rules import input_schema

log = logging.getLogger(__name__)

PROXY_BASE = "https://queue.fal.run"
SEGMENT_ENDPOINT = "fal-ai/evf-sam"
PROXY_APP = "fal-ai/flux-pro"  # kkiai's documented example answers a flux-lora submit with another app's URLs


@dataclass(frozen=True)
class RefusedSubmit:
    endpoint: str
    body: Any
    detail: list[dict[str, Any]]


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    authorization: str | None
    host: str
    status: int | None = None  # the answer's HTTP status; None while unanswered or when the connection was dropped


@dataclass
class FakeJob:
    request_id: str
    app: str  # owner/app: the request routes use it, without the endpoint's sub-path
    endpoint: str
    payload: dict[str, Any]
    script: list[dict[str, Any]]
    index: int = 0
    cancelled: bool = False
    input_size: tuple[int, int] | None = None
    load_error: str | None = None
    images: list[dict[str, Any]] = field(default_factory=list)
    moves: int = 0  # bumped on every change, so a waiting stream notices even a cancel at the same index
    on_move: Callable[[], None] | None = None

    def move_to(self, index: int) -> None:
        self.index = min(max(index, 0), len(self.script) - 1)
        self.moves += 1
        if self.on_move is not None:
            self.on_move()

    @property
    def current(self) -> dict[str, Any]:
        return self.script[self.index]

    @property
    def completed(self) -> bool:
        return bool(self.current["status"] == "COMPLETED")

    @property
    def state(self) -> str:
        return "CANCELLED" if self.cancelled else str(self.current["status"])


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(data).encode(), headers={**(headers or {}), "Content-Type": "application/json"}
    )


class FakeFal:
    def __init__(
        self,
        *,
        key: str = "fake-fal-key",
        auth_scheme: Literal["Key", "Bearer"] = "Key",
        positions: Iterable[int] = (3, 2, 1, 0),
        positions_for: Callable[[int], Iterable[int]] | None = None,
        in_progress_steps: int = 1,
        auto_advance: bool = True,
        hold: asyncio.Event | bool | None = None,
        fail_with: str | None = None,
        nsfw: list[bool] | None = None,
        result_size: tuple[int, int] | None = None,
        result_seed: int = 42,
        stream: bool = True,
        stream_drop_after: int | None = None,
        stream_keepalive_s: float = 15.0,
        status_5xx_rate: float = 0.0,
        submit_5xx_count: int = 0,
        submit_5xx_status: int = 503,
        hang_submit: bool = False,
        submit_gate: asyncio.Event | None = None,
        drop_status_count: int = 0,
        rate_limit_count: int = 0,
        retry_after: str = "1",
        proxy_mode: bool = False,
        result_expired: bool = False,
        slow_result_s: float = 0.0,
        cancel_running_finishes: bool = False,
        result_noise: bool = False,
        result_echo: bool = False,
        segment_box: Sequence[float] | None = (0.3, 0.3, 0.7, 0.7),
        segment_fail_with: str | None = None,
        seed: int = 0,
    ) -> None:
        """Knobs (all optional):

        - ``positions``, ``in_progress_steps``, ``auto_advance``, ``hold``: the progression (module docstring).
        - ``positions_for``: the positions of the n-th job created (from 0) instead of ``positions``, so that each
          job has its own place in line (``lambda n: range(n, -1, -1)``: the n-th job starts at position n).
        - ``fail_with``: COMPLETED with that ``error``; the result answers 500 + ``X-Fal-Error-Type``.
        - ``nsfw``: ``has_nsfw_concepts`` of the result (default all False); ``result_size``: output pixels
          (default: the input's); ``result_seed``: the seed reported when the payload has none.
        - ``stream=False``: the SSE route answers 404, as a proxy that does not forward it; ``stream_drop_after``:
          the stream closes after that many events without COMPLETED; ``stream_keepalive_s``: comment interval.
        - ``status_5xx_rate``: share of status calls answered 503 (seeded).
        - ``submit_5xx_count``: the first N submits answer ``submit_5xx_status`` (503) and create no job.
        - ``hang_submit``: submits create the job and never answer.
        - ``submit_gate``: submits create the job, then answer only once the event is set (``submits_waiting``
          counts those waiting), so a test can act while a submit is on the wire.
        - ``drop_status_count``: the first N status calls close the connection (aiohttp re-sends an idempotent
          request once by itself, so one client-side failure uses two).
        - ``rate_limit_count``: the first N queue calls answer 429 with ``Retry-After: retry_after``.
        - ``proxy_mode``: answers carry ``https://queue.fal.run/...`` URLs (another app), as kkiai does.
        - ``result_expired``: the result answers 404 as for a result past fal's retention (fal.md does not say
          what fal answers then; 404 is this fake's guess); ``slow_result_s``:
          real seconds before the result answers; ``cancel_running_finishes``: a cancel while IN_PROGRESS is
          accepted (202) but the job still finishes, as fal allows.
        - Segmentation (``fal-ai/evf-sam``): the mask is a white ellipse inside ``segment_box`` (fractions x1, y1,
          x2, y2 of the input), all black when it is None (the words matched nothing); ``segment_fail_with``: as
          ``fail_with``, for segmentations only (``fail_with`` then applies to the inpaintings only).
        """
        self.key = key
        self.auth_scheme = auth_scheme
        self.positions = list(positions)
        self.positions_for = positions_for
        self.in_progress_steps = in_progress_steps
        self.auto_advance = auto_advance
        self.hold = asyncio.Event() if hold is True else (hold or None)
        self.fail_with = fail_with
        self.nsfw = nsfw
        self.result_size = result_size
        self.result_seed = result_seed
        self.stream = stream
        self.stream_drop_after = stream_drop_after
        self.stream_keepalive_s = stream_keepalive_s
        self.status_5xx_rate = status_5xx_rate
        self.submit_5xx_count = submit_5xx_count
        self.submit_5xx_status = submit_5xx_status
        self.hang_submit = hang_submit
        self.submit_gate = submit_gate
        self.submits_waiting = 0
        self.drop_status_count = drop_status_count
        self.rate_limit_count = rate_limit_count
        self.retry_after = retry_after
        self.proxy_mode = proxy_mode
        self.result_expired = result_expired
        self.slow_result_s = slow_result_s
        self.cancel_running_finishes = cancel_running_finishes
        self.result_noise = result_noise  # incompressible result images, for upload-limit tests
        self.result_echo = result_echo  # the input photo comes back as the result: real content, for benchmarks
        self.segment_box = tuple(segment_box) if segment_box is not None else None
        self.segment_fail_with = segment_fail_with
        self.base_url: str | None = None

        self.submits: list[Any] = []  # every submit body received, accepted or not
        self.submit_headers: list[dict[str, str]] = []  # the headers of each of those submits
        self.refused: list[RefusedSubmit] = []  # bodies fal's input schema refuses (422): a test asserts none
        self.status_calls = 0
        self.stream_calls = 0
        self.result_calls = 0
        self.keepalives_sent = 0  # SSE comment lines
        self.cancels: list[tuple[str, str]] = []  # (request id, fal's answer status)
        self.requests: list[RecordedRequest] = []
        self.jobs: dict[str, FakeJob] = {}
        self.uploads: dict[str, bytes] = {}  # storage uploads by file name
        self.files: dict[str, tuple[bytes, str]] = {}  # served under /files/{name}: (bytes, content type)
        self.errors: list[str] = []  # crashes of the fake itself
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._closing = asyncio.Event()
        self._poked = asyncio.Event()  # replaced on every poke: set once a job moved, the hold lifted or we close
        self._slots: dict[str, tuple[str, str]] = {}  # upload token -> (file name, content type)

    # wiring

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_post("/storage/upload/initiate", self._upload_initiate)
        app.router.add_put("/storage/put/{token}", self._upload_put)
        app.router.add_get("/files/{name}", self._file)
        app.router.add_get("/_fake/state", self._ctl_state)
        app.router.add_post("/_fake/release", self._ctl_release)
        app.router.add_post("/_fake/hold", self._ctl_hold)
        app.router.add_post("/_fake/advance/{rid}", self._ctl_advance)
        app.router.add_post("/_fake/complete/{rid}", self._ctl_complete)
        app.router.add_get("/{owner}/{app}/requests/{rid}/status/stream", self._stream)
        app.router.add_get("/{owner}/{app}/requests/{rid}/status", self._status)
        app.router.add_put("/{owner}/{app}/requests/{rid}/cancel", self._cancel)
        app.router.add_get("/{owner}/{app}/requests/{rid}", self._result)
        app.router.add_post("/{owner}/{app}", self._submit)
        app.router.add_post("/{owner}/{app}/{path:.+}", self._submit)
        app.on_shutdown.append(self._on_shutdown)
        return app

    @property
    def media_host(self) -> str:
        """``127.0.0.1:PORT``: allow-list it in ``fal.media_hosts`` so result images can be downloaded."""
        return self._base().split("://", 1)[1]

    def _base(self) -> str:
        if self.base_url is None:
            raise RuntimeError("FakeFal.base_url is unset: use start_fake_fal() or serve_fake_fal()")
        return self.base_url

    async def _on_shutdown(self, app: web.Application) -> None:
        self._closing.set()  # hanging submits and idle streams end, so the server stops at once
        self._poke()

    def _poke(self) -> None:
        """Wake the streams waiting for a change (a thousand idle streams cost nothing while they wait)."""
        self._poked.set()
        self._poked = asyncio.Event()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        if self.base_url is None:
            self.base_url = f"{request.scheme}://{request.host}"
        if request.path.startswith("/_fake/"):
            return await handler(request)
        auth = request.headers.get("Authorization")
        record = RecordedRequest(request.method, request.path, request.query_string, auth, request.host)
        self.requests.append(record)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            record.status = exc.status
            raise
        except Exception as exc:  # a bug in the fake must fail the test, not pass for a fal outage (5xx retries)
            log.exception("fake fal failed on %s %s", request.method, request.path)
            self.errors.append(f"{request.method} {request.path}: {exc!r}")
            response = _json({"detail": f"fake fal crashed: {exc!r}"}, 400)
        if not (request.transport is None or request.transport.is_closing()):
            record.status = response.status  # stays None for a dropped connection
        return response

    def _refuse(self, request: web.Request) -> web.Response | None:
        """401 without the right key; 429 while ``rate_limit_count`` lasts."""
        if request.headers.get("Authorization") != f"{self.auth_scheme} {self.key}":
            return _json({"detail": "invalid key credentials"}, 401)
        if self.rate_limit_count > 0:
            self.rate_limit_count -= 1
            return _json(
                {"detail": "Too many requests", "error_type": "rate_limited"}, 429, {"Retry-After": self.retry_after}
            )
        return None

    def _job(self, request: web.Request) -> FakeJob | None:
        job = self.jobs.get(request.match_info["rid"])
        app = f"{request.match_info['owner']}/{request.match_info['app']}"
        return job if job is not None and job.app == app else None

    def _urls(self, job: FakeJob) -> dict[str, str]:
        root = f"{PROXY_BASE}/{PROXY_APP}" if self.proxy_mode else f"{self._base()}/{job.app}"
        root = f"{root}/requests/{job.request_id}"
        return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}

    def _status_body(self, job: FakeJob) -> dict[str, Any]:
        return {**job.current, "request_id": job.request_id, **self._urls(job)}

    # steering

    def release(self) -> None:
        """Let held jobs move on."""
        if self.hold is not None:
            self.hold.set()
            self._poke()

    def advance(self, request_id: str, steps: int = 1) -> None:
        job = self.jobs[request_id]
        job.move_to(job.index + steps)

    def complete(self, request_id: str) -> None:
        job = self.jobs[request_id]
        job.move_to(len(job.script) - 1)

    def render_result(self, request_id: str) -> None:
        """Make a job's result images now rather than at the first result call (benchmarks time only the bot)."""
        job = self.jobs[request_id]
        if not job.images:
            job.images = self._render(job)

    async def _until(self, event: asyncio.Event) -> None:
        """Wait for ``event``, or for the server to close."""
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._closing.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _held(self) -> bool:
        return self.hold is not None and not self.hold.is_set()

    def _observed(self, job: FakeJob) -> None:
        """A status was shown: move on, if the job moves on its own."""
        if self.auto_advance and not self._held() and not job.completed:
            job.move_to(job.index + 1)

    # queue routes

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        if refused := self._refuse(request):
            return refused
        try:
            body = await request.json()
        except ValueError:
            return _json({"detail": "Invalid JSON body"}, 400)
        self.submits.append(body)
        self.submit_headers.append(dict(request.headers))
        if self.submit_5xx_count > 0:
            self.submit_5xx_count -= 1
            return _json({"detail": "no runner available"}, self.submit_5xx_status)
        owner, app = request.match_info["owner"], request.match_info["app"]
        endpoint = f"{owner}/{app}/{request.match_info.get('path', '')}".rstrip("/")
        schema = input_schema(endpoint)
        if schema is None:  # a schema in INPUT_SCHEMAS first: no body goes unchecked
            return _json({"detail": f"{endpoint} is not an endpoint this fake serves"}, 404)
        if detail := schema.problems(body):
            self.refused.append(RefusedSubmit(endpoint, body, detail))
            log.warning("fake fal refused a submit to %s: %s", endpoint, detail)
            return _json({"detail": detail}, 422)
        job = self._new_job(f"{owner}/{app}", endpoint, body)
        job.input_size, job.load_error = await asyncio.to_thread(self._input_size, body, schema.file_inputs)
        if job.load_error is not None:  # the runner fails; the 422 detail comes with the result
            job.script[-1] = {**job.script[-1], "error": "Invalid status code: 422"}
        if self.hang_submit:
            await self._closing.wait()  # the job exists, the answer never comes
            return _json({"detail": "shutting down"}, 503)
        if self.submit_gate is not None and not self.submit_gate.is_set():
            self.submits_waiting += 1
            try:
                await self._until(self.submit_gate)  # the job exists, the answer waits for the test
            finally:
                self.submits_waiting -= 1
            if self._closing.is_set():
                return _json({"detail": "shutting down"}, 503)
        queue_position = job.current.get("queue_position", 0)
        answer = {"status": "IN_QUEUE", "request_id": job.request_id, "queue_position": queue_position}
        return _json({**answer, **self._urls(job)}, headers={"x-fal-request-id": job.request_id})

    def _new_job(self, app: str, endpoint: str, payload: dict[str, Any]) -> FakeJob:
        request_id = str(uuid.UUID(int=next(self._ids)))
        positions = self.positions if self.positions_for is None else self.positions_for(len(self.jobs))
        script: list[dict[str, Any]] = [{"status": "IN_QUEUE", "queue_position": p} for p in positions]
        script += [{"status": "IN_PROGRESS", "logs": None}] * self.in_progress_steps
        done: dict[str, Any] = {"status": "COMPLETED", "logs": None, "metrics": {"inference_time": 1.5}}
        if (failure := self._failure(endpoint)) is not None:
            done |= {"error": failure, "error_type": "runner_server_error"}
        script.append(done)
        job = FakeJob(
            request_id=request_id, app=app, endpoint=endpoint, payload=payload, script=script, on_move=self._poke
        )
        self.jobs[request_id] = job
        return job

    def _input_size(
        self, body: dict[str, Any], file_inputs: Iterable[str]
    ) -> tuple[tuple[int, int] | None, str | None]:
        """The input image's size, or which file field (``image_url``, ``mask_url``) fal's runner could not load."""
        size = None
        for name in (n for n in file_inputs if n in body):
            data = self._load(body[name])
            if data is None:
                return None, name
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    size = size or img.size
            except (OSError, ValueError):
                return None, name
        return size, None

    def _load(self, url: str) -> bytes | None:
        if url.startswith("data:"):
            header, _, encoded = url.partition(",")
            try:
                return base64.b64decode(encoded, validate=True) if header.endswith(";base64") else None
            except (binascii.Error, ValueError):
                return None
        prefix = f"{self.base_url}/files/"
        if self.base_url and url.startswith(prefix):
            stored = self.files.get(url.removeprefix(prefix))
            return stored[0] if stored else None
        return None  # fal's runner would download it; this fake never calls out

    async def _status(self, request: web.Request) -> web.StreamResponse:
        if refused := self._refuse(request):
            return refused
        self.status_calls += 1
        if self.drop_status_count > 0:
            self.drop_status_count -= 1
            assert request.transport is not None
            request.transport.close()  # the client sees the connection drop
            return web.Response()
        if self.status_5xx_rate and self._rng.random() < self.status_5xx_rate:
            return _json({"detail": "upstream unavailable"}, 503)
        job = self._job(request)
        if job is None:
            return _json({"status": "NOT_FOUND"}, 404)
        body = self._status_body(job)
        self._observed(job)
        return _json(body, 200 if body["status"] == "COMPLETED" else 202)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if not self.stream:
            return _json({"detail": "Not Found"}, 404)
        if refused := self._refuse(request):
            return refused
        self.stream_calls += 1
        job = self._job(request)
        if job is None:
            return _json({"status": "NOT_FOUND"}, 404)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        # the client may leave mid-write (aiohttp does not cancel the handler): nobody watches, nothing moves
        with contextlib.suppress(ConnectionResetError):
            await self._send_events(request, resp, job)
        return resp

    async def _send_events(self, request: web.Request, resp: web.StreamResponse, job: FakeJob) -> None:
        sent = 0
        while request.transport is not None and not request.transport.is_closing():
            body = self._status_body(job)
            await resp.write(f"data: {json.dumps(body)}\n\n".encode())
            sent += 1
            if body["status"] == "COMPLETED":
                break
            if self.stream_drop_after is not None and sent >= self.stream_drop_after:
                break  # closed without COMPLETED
            seen = job.moves
            self._observed(job)
            loop = asyncio.get_running_loop()
            quiet_since = loop.time()
            while job.moves == seen and not self._closing.is_set():
                poked = self._poked  # advance(), complete(), release(), cancels and closing set it
                left = quiet_since + self.stream_keepalive_s - loop.time()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poked.wait(), max(left, 0.0))
                if request.transport is None or request.transport.is_closing():
                    return  # the client left while the job waited
                self._observed(job)  # a lifted hold moves the job on here
                if job.moves == seen and loop.time() - quiet_since >= self.stream_keepalive_s:
                    await resp.write(b": keep-alive\n\n")
                    self.keepalives_sent += 1
                    quiet_since = loop.time()
            if self._closing.is_set():
                break
        await resp.write_eof()

    async def _result(self, request: web.Request) -> web.StreamResponse:
        if refused := self._refuse(request):
            return refused
        self.result_calls += 1
        if self.slow_result_s:
            await asyncio.sleep(self.slow_result_s)
        job = self._job(request)
        if job is None or self.result_expired:
            return _json({"detail": "Request not found"}, 404)
        if not job.completed:
            return _json({"detail": "Request is still in progress"}, 400)
        if job.cancelled:
            return _json(
                {"detail": "Request was cancelled", "error_type": "client_cancelled"},
                499,
                {"X-Fal-Error-Type": "client_cancelled"},
            )
        if job.load_error is not None:
            detail = [{"loc": ["body", job.load_error], "msg": "Could not load the image.", "type": "image_load_error"}]
            return _json({"detail": detail}, 422, {"X-Fal-Retryable": "false"})
        if (failure := self._failure(job.endpoint)) is not None:
            return _json(
                {"detail": failure, "error_type": "runner_server_error"},
                500,
                {"X-Fal-Error-Type": "runner_server_error"},
            )
        if job.endpoint == SEGMENT_ENDPOINT:
            if not job.images:
                job.images = [await asyncio.to_thread(self._segment, job)]
            return _json({"image": job.images[0]})
        if not job.images:
            job.images = await asyncio.to_thread(self._render, job)
        payload = job.payload
        count = len(job.images)
        return _json(
            {
                "images": job.images,
                "timings": {"inference": 1.5},
                "seed": payload.get("seed", self.result_seed),
                "has_nsfw_concepts": self.nsfw if self.nsfw is not None else [False] * count,
                "prompt": payload.get("prompt"),
            }
        )

    def _failure(self, endpoint: str) -> str | None:
        return self.segment_fail_with if endpoint == SEGMENT_ENDPOINT else self.fail_with

    def _segment(self, job: FakeJob) -> dict[str, Any]:
        """evf-sam's answer: a black-and-white PNG at the input's size, white where the words "matched"."""
        width, height = job.input_size or (512, 512)
        mask = Image.new("L", (width, height), 0)
        if self.segment_box is not None:
            x1, y1, x2, y2 = self.segment_box
            box = (round(x1 * width), round(y1 * height), round(x2 * width) - 1, round(y2 * height) - 1)
            ImageDraw.Draw(mask).ellipse(box, fill=255)
        out = io.BytesIO()
        mask.save(out, "PNG")
        name = f"{job.request_id}-mask.png"
        self.files[name] = (out.getvalue(), "image/png")
        return {
            "url": f"{self._base()}/files/{name}",
            "content_type": "image/png",
            "file_name": name,
            "file_size": len(out.getvalue()),
        }

    def _render(self, job: FakeJob) -> list[dict[str, Any]]:
        fmt = job.payload.get("output_format", "jpeg")
        width, height = self.result_size or job.input_size or (512, 512)
        images = []
        for index in range(int(job.payload.get("num_images", 1))):
            source = self._load(str(job.payload.get("image_url", ""))) if self.result_echo else None
            if source is not None:
                with Image.open(io.BytesIO(source)) as loaded:
                    img = loaded.convert("RGB").resize((width, height))
            elif self.result_noise:
                img = Image.frombytes("RGB", (width, height), self._rng.randbytes(width * height * 3))
            else:
                img = Image.new("RGB", (width, height), (40 * index % 256, 120, 200))
            out = io.BytesIO()
            img.save(out, "PNG" if fmt == "png" else "JPEG")
            name = f"{job.request_id}-{index}.{'png' if fmt == 'png' else 'jpg'}"
            content_type = f"image/{fmt}"
            self.files[name] = (out.getvalue(), content_type)
            images.append(
                {
                    "url": f"{self._base()}/files/{name}",
                    "width": width,
                    "height": height,
                    "content_type": content_type,
                    "file_name": name,
                    "file_size": len(out.getvalue()),
                }
            )
        return images

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        if refused := self._refuse(request):
            return refused
        job = self._job(request)
        if job is None:
            self.cancels.append((request.match_info["rid"], "NOT_FOUND"))
            return _json({"status": "NOT_FOUND"}, 404)
        if job.completed:
            self.cancels.append((job.request_id, "ALREADY_COMPLETED"))
            return _json({"status": "ALREADY_COMPLETED"}, 400)
        running = job.current["status"] == "IN_PROGRESS"
        if not (running and self.cancel_running_finishes):
            job.cancelled = True
            job.script = [*job.script[: job.index], {"status": "COMPLETED", "logs": None, "error": "Request cancelled"}]
            job.script[-1]["error_type"] = "client_cancelled"
            job.move_to(len(job.script) - 1)
            self.cancels.append((job.request_id, "CANCELLATION_REQUESTED"))
        return _json({"status": "CANCELLATION_REQUESTED"}, 202)

    # storage and media

    async def _upload_initiate(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"{self.auth_scheme} {self.key}":
            return _json({"detail": "invalid key credentials"}, 401)
        body = await request.json()
        token = uuid.uuid4().hex
        name = f"upload-{token[:8]}-{body.get('file_name') or 'file'}"
        self._slots[token] = (name, body.get("content_type") or "application/octet-stream")
        return _json({"upload_url": f"{self._base()}/storage/put/{token}", "file_url": f"{self._base()}/files/{name}"})

    async def _upload_put(self, request: web.Request) -> web.StreamResponse:
        slot = self._slots.pop(request.match_info["token"], None)
        if slot is None:
            return web.Response(status=403, text="unknown or used upload slot")
        name, content_type = slot
        data = await request.read()
        self.uploads[name] = data
        self.files[name] = (data, request.headers.get("Content-Type", content_type))
        return web.Response(status=200)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        stored = self.files.get(request.match_info["name"])
        if stored is None:
            return web.Response(status=404)
        return web.Response(body=stored[0], content_type=stored[1])

    # control routes, for a fake in another process

    def state(self) -> dict[str, Any]:
        return {
            "submits": len(self.submits),
            "refused": [r.detail for r in self.refused],
            "status_calls": self.status_calls,
            "stream_calls": self.stream_calls,
            "result_calls": self.result_calls,
            "cancels": self.cancels,
            "held": self._held(),
            "jobs": {rid: {"state": job.state, "index": job.index} for rid, job in self.jobs.items()},
            "errors": self.errors,
        }

    async def _ctl_state(self, request: web.Request) -> web.StreamResponse:
        return _json(self.state())

    async def _ctl_release(self, request: web.Request) -> web.StreamResponse:
        self.release()
        return _json(self.state())

    async def _ctl_hold(self, request: web.Request) -> web.StreamResponse:
        if self.hold is None:
            self.hold = asyncio.Event()
        self.hold.clear()
        return _json(self.state())

    async def _ctl_advance(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["rid"] not in self.jobs:
            return _json({"detail": "unknown job"}, 404)
        self.advance(request.match_info["rid"], int(request.query.get("steps", "1")))
        return _json(self.state())

    async def _ctl_complete(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["rid"] not in self.jobs:
            return _json({"detail": "unknown job"}, 404)
        self.complete(request.match_info["rid"])
        return _json(self.state())


async def start_fake_fal(aiohttp_server: Callable[..., Awaitable[Any]], **knobs: Any) -> FakeFal:
    """Serve a FakeFal on 127.0.0.1 with pytest-aiohttp's ``aiohttp_server`` and set its ``base_url``."""
    fake = FakeFal(**knobs)
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("")).rstrip("/")
    return fake


async def serve_fake_fal(host: str = "127.0.0.1", port: int = 0, **knobs: Any) -> tuple[FakeFal, web.AppRunner]:
    """Serve a FakeFal with ``web.AppRunner`` (port 0 picks a free one); stop it with ``await runner.cleanup()``."""
    fake = FakeFal(**knobs)
    runner = web.AppRunner(fake.app(), shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    fake.base_url = f"http://{host}:{bound}"
    return fake, runner


async def _main(host: str, port: int, knobs: dict[str, Any]) -> None:
    fake, runner = await serve_fake_fal(host, port, **knobs)
    print(fake.base_url, flush=True)  # the rig reads the address from the first line
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run the fake fal queue on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--knobs", default="{}", help="FakeFal knobs as JSON, e.g. '{\"hold\": true}'")
    args = parser.parse_args()
    knobs = json.loads(args.knobs)
    if "result_size" in knobs:
        knobs["result_size"] = tuple(knobs["result_size"])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.host, args.port, knobs))
