"""The redacting formatter: no secret or Discord token survives into a log line, tracebacks included."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from bot.config import Settings
from bot.logs import MASK, RedactingFormatter, Redactor, setup_logging

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
