"""The redacting formatter: no secret or Discord token survives into a log line, tracebacks included."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from bot.config import Settings
from bot.logs import MASK, JsonFormatter, RedactingFormatter, Redactor, secrets_of, setup_logging

DISCORD_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.discord-bot-token-value"
FAL_KEY = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0:0123456789abcdef0123456789abcdef"
INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTI0NjgwMTM1Nzk6c2VjcmV0LXBhcnQ.AbC-d_E"
APP_ID = "1234567890123456789"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A real logger whose only handler writes through the redacting formatter into a StringIO."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter(Redactor([DISCORD_TOKEN, FAL_KEY])))
    logger = logging.getLogger("tests.logs.captured")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.handlers.clear()


def test_fal_key_in_an_exception_message_is_masked(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise RuntimeError(f"fal refused the header Authorization: Key {FAL_KEY}")
    except RuntimeError:
        logger.exception("submit failed job=%s", "5f0c")
    out = stream.getvalue()
    assert FAL_KEY not in out
    assert "Traceback (most recent call last)" in out and "RuntimeError: fal refused the header" in out
    assert f"Authorization: Key {MASK}" in out and "submit failed job=5f0c" in out


def test_chained_cause_with_a_bare_interaction_token_is_masked(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        try:
            raise ValueError(f"bad token {INTERACTION_TOKEN}")
        except ValueError as exc:
            raise RuntimeError("edit failed") from exc
    except RuntimeError:
        logger.error("delivery failed", exc_info=True)
    out = stream.getvalue()
    assert "aW50ZXJhY3Rpb246" not in out and INTERACTION_TOKEN not in out
    assert f"ValueError: bad token {MASK}" in out and "RuntimeError: edit failed" in out


@pytest.mark.parametrize(
    "url",
    [
        f"https://discord.com/api/v10/webhooks/{APP_ID}/{INTERACTION_TOKEN}/messages/@original",
        f"https://discord.com/api/v10/interactions/{APP_ID}/{INTERACTION_TOKEN}/callback",
        f"https://discord.com/api/v10/webhooks/{APP_ID}/{INTERACTION_TOKEN}?wait=true",
    ],
    ids=["followup-edit", "interaction-callback", "webhook-query"],
)
def test_interaction_token_in_a_url_is_masked(captured: tuple[logging.Logger, io.StringIO], url: str) -> None:
    logger, stream = captured
    logger.warning("PATCH %s returned 404 job=%s", url, "5f0c")
    out = stream.getvalue()
    assert INTERACTION_TOKEN not in out and "aW50ZXJhY3Rpb246" not in out
    assert f"/{APP_ID}/{MASK}" in out  # the id stays readable; only the token segment goes


def test_webhook_token_of_any_shape_is_masked(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    webhook_token = "Xy9_plain-webhook-token-not-base64-of-interaction"
    logger.info("POST URL('https://discord.com/api/webhooks/%s/%s')", APP_ID, webhook_token)
    out = stream.getvalue()
    assert webhook_token not in out
    assert f"/webhooks/{APP_ID}/{MASK}')" in out


def test_discord_token_in_exc_text_and_stack_info_is_masked(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    # A record that arrives with its traceback already rendered (a queue handler, or one formatted before).
    record = logging.LogRecord("tests.logs", logging.ERROR, __file__, 1, "login failed", None, None)
    record.exc_text = f'Traceback (most recent call last):\n  ...\nLoginFailure: token "Bot {DISCORD_TOKEN}" refused'
    record.stack_info = f"Stack (most recent call last):\n  start(token={DISCORD_TOKEN!r})"
    logger.handle(record)
    out = stream.getvalue()
    assert DISCORD_TOKEN not in out
    assert f'token "Bot {MASK}" refused' in out and f"start(token='{MASK}')" in out and "login failed" in out


def test_record_is_left_as_it_was(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """Only the output is scrubbed: a later handler sees the record's own message and arguments."""
    logger, stream = captured
    record = logging.LogRecord("tests.logs", logging.INFO, __file__, 1, "key %s", (FAL_KEY,), None)
    logger.handle(record)
    assert FAL_KEY not in stream.getvalue()
    assert record.getMessage() == f"key {FAL_KEY}"


@pytest.mark.parametrize(
    ("secrets", "text", "expected"),
    [
        (["hunter2-secret"], "pw=hunter2-secret!", f"pw={MASK}!"),
        (["abc12"], "abc12 is too short to be a secret", "abc12 is too short to be a secret"),
        (["outer-secret-inner", "secret"], "x outer-secret-inner y secret", f"x {MASK} y {MASK}"),
        (["a.b*c+d?"], "literal a.b*c+d? only, not aXbbc", f"literal {MASK} only, not aXbbc"),
        ([], "job=5f0c guild=42 user=7", "job=5f0c guild=42 user=7"),
        ([], "/webhooks/42", "/webhooks/42"),
    ],
    ids=["known-secret", "short-ignored", "longest-first", "regex-chars-literal", "plain-text", "url-without-token"],
)
def test_redactor(secrets: list[str], text: str, expected: str) -> None:
    assert Redactor(secrets)(text) == expected


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """setup_logging replaces the root handlers (pytest's capture among them): put them back afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {name: logging.getLogger(name).level for name in ("discord", "aiosqlite")})
    yield root
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def test_setup_logging_installs_one_redacting_handler(root_logger: logging.Logger) -> None:
    settings = Settings(discord={"token": DISCORD_TOKEN}, fal={"key": FAL_KEY}, logging={"level": "DEBUG"})
    setup_logging(settings)
    [handler] = root_logger.handlers
    assert isinstance(handler, logging.StreamHandler) and isinstance(handler.formatter, RedactingFormatter)
    assert root_logger.level == logging.DEBUG
    assert logging.getLogger("discord").level == logging.INFO and logging.getLogger("aiosqlite").level == logging.INFO
    stream = io.StringIO()
    handler.setStream(stream)
    logging.getLogger("bot.fal").debug("headers %s %s", DISCORD_TOKEN, FAL_KEY)
    line = stream.getvalue()
    assert DISCORD_TOKEN not in line and FAL_KEY not in line
    assert f" DEBUG bot.fal: headers {MASK} {MASK}\n" in line


# logging.format = "json"


@pytest.fixture
def json_captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """As ``captured``, through the JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(Redactor([DISCORD_TOKEN, FAL_KEY, QUOTED_SECRET])))
    logger = logging.getLogger("tests.logs.json")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.handlers.clear()


QUOTED_SECRET = 'pa"ss\\word\nwith-json-escapes'  # json.dumps escapes these: it must be masked before


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line of the output as JSON (a line that does not parse fails the test)."""
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_json_lines_carry_the_ids_the_message_names(json_captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_captured
    job_id = "5f0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e"
    logger.info("job=%s guild=%s user=%s accepted", job_id, 42, 7)
    logger.warning("job=%s cancelled by user=%s, the job of user=%s", job_id, 9, 7)
    logger.info("job=%s guild=%s user=%s submitted request=%s", job_id, None, 7, "0af-1b2")
    logger.info("request=%s: status stream refused (HTTP %s); polling", "77-aa", 404)
    logger.info("no ids here, not even subjob=1 or x.user=2")
    logger.error("picked from extra", extra={"job": job_id, "guild": 42, "user": 7})

    accepted, cancelled, submitted, stream_line, plain, extra = lines_of(stream)
    assert accepted["message"] == f"job={job_id} guild=42 user=7 accepted"
    assert (accepted["job"], accepted["guild"], accepted["user"]) == (job_id, "42", "7")
    assert (accepted["level"], accepted["logger"]) == ("INFO", "tests.logs.json")
    assert datetime.fromisoformat(accepted["time"]).utcoffset() == timedelta(0)
    assert cancelled["user"] == "9" and cancelled["level"] == "WARNING"  # the first mention: who did it
    assert "guild" not in submitted and submitted["request"] == "0af-1b2"  # guild=None: a DM, no field
    assert stream_line["request"] == "77-aa"
    assert set(plain) == {"time", "level", "logger", "message"}
    assert (extra["job"], extra["guild"], extra["user"]) == (job_id, "42", "7")


def test_json_lines_scrub_secrets_in_messages_and_tracebacks(json_captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_captured
    url = f"https://discord.com/api/v10/webhooks/{APP_ID}/{INTERACTION_TOKEN}/messages/@original"
    logger.warning("PATCH %s failed job=%s user=%s", url, "5f0c", DISCORD_TOKEN)
    logger.info("the password is %s", QUOTED_SECRET)
    try:
        try:
            raise ValueError(f"bad token {INTERACTION_TOKEN}")
        except ValueError as exc:
            raise RuntimeError(f"fal refused Authorization: Key {FAL_KEY}") from exc
    except RuntimeError:
        logger.exception("submit failed job=%s", "5f0c")
    logger.info("where am I", stack_info=True, extra={"user": FAL_KEY})
    record = logging.LogRecord("tests.logs", logging.ERROR, __file__, 1, "login failed", None, None)
    record.stack_info = f"Stack (most recent call last):\n  start(token={DISCORD_TOKEN!r})"
    logger.handle(record)

    out = stream.getvalue()
    parsed = lines_of(stream)
    for secret in (DISCORD_TOKEN, FAL_KEY, INTERACTION_TOKEN, "aW50ZXJhY3Rpb246", QUOTED_SECRET):
        assert secret not in out and secret not in json.dumps(parsed, ensure_ascii=False)
        assert all(secret not in str(value) for line in parsed for value in line.values())
    webhook, quoted, failed, stacked, login = parsed
    assert f"/webhooks/{APP_ID}/{MASK}/messages" in webhook["message"] and "user" not in webhook  # a mask is no id
    assert webhook["job"] == "5f0c"
    assert quoted["message"] == f"the password is {MASK}"
    trace = failed["exception"]
    assert trace.startswith("Traceback (most recent call last)") and "\n" in trace  # one JSON line, newlines inside
    assert f"ValueError: bad token {MASK}" in trace and f"RuntimeError: fal refused Authorization: Key {MASK}" in trace
    assert failed["job"] == "5f0c" and failed["level"] == "ERROR"
    assert stacked["stack"].startswith("Stack (most recent call last)") and stacked["user"] == MASK
    assert login["stack"].endswith(f"start(token='{MASK}')")


def test_setup_logging_writes_json_when_asked(root_logger: logging.Logger) -> None:
    settings = Settings(
        discord={"token": DISCORD_TOKEN},
        fal={"key": FAL_KEY},
        logging={"format": "json"},
        storage={"url": "postgresql://fluxpaint:db-password-42@db.internal/fluxpaint"},
    )
    setup_logging(settings)
    [handler] = root_logger.handlers
    assert isinstance(handler, logging.StreamHandler) and isinstance(handler.formatter, JsonFormatter)
    stream = io.StringIO()
    handler.setStream(stream)
    logging.getLogger("bot.store").warning("could not reach postgresql://fluxpaint:db-password-42@db job=%s", "ab")
    [line] = lines_of(stream)
    assert line["message"] == f"could not reach postgresql://fluxpaint:{MASK}@db job=ab" and line["job"] == "ab"


def test_every_secret_of_the_settings_is_scrubbed() -> None:
    settings = Settings(
        discord={"token": DISCORD_TOKEN},
        fal={"key": FAL_KEY},
        web={"secret": "painter-link-hmac-key"},
        storage={"url": "postgresql://bot:pg-pass-word@localhost/db"},
    )
    assert set(secrets_of(settings)) == {DISCORD_TOKEN, FAL_KEY, "painter-link-hmac-key", "pg-pass-word"}
    assert secrets_of(Settings(discord={"token": DISCORD_TOKEN}, fal={"key": FAL_KEY})) == [DISCORD_TOKEN, FAL_KEY]


@pytest.mark.parametrize(
    ("url", "password", "shown"),
    [
        ("postgresql://bot@db/fp?password=query-pass-1", "query-pass-1", "postgresql://bot@db/fp?password=***"),
        ("postgresql://bot:p%40ss-word@db:5432/fp", "p@ss-word", "postgresql://bot:***@db:5432/fp"),
    ],
    ids=["query parameter", "percent-encoded"],
)
def test_a_database_password_is_scrubbed_however_it_is_written(url: str, password: str, shown: str) -> None:
    from bot.store_rows import masked_url

    settings = Settings(discord={"token": DISCORD_TOKEN}, fal={"key": FAL_KEY}, storage={"url": url})
    assert password in secrets_of(settings)
    assert masked_url(url) == shown and password not in masked_url(url)
    assert password not in repr(settings) and password not in str(settings.storage)
