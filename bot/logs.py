"""Logging set-up: text or one JSON object per line, secrets and Discord tokens scrubbed from every string written;
never logs by itself."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime

from bot.config import Settings
from bot.store_rows import url_passwords

MASK = "**********"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MIN_SECRET_LENGTH = 6  # a shorter "secret" would blank ordinary words

# An interaction token is base64url of "interaction:<id>:..."; discord.py's DEBUG lines and aiohttp's errors
# carry it bare, and it grants 15 minutes of replies in the member's channel.
_INTERACTION_TOKEN = r"aW50ZXJhY3Rpb246[A-Za-z0-9_.=-]+"
# Webhook and interaction URLs hold a token as the segment after the id, whatever the token looks like.
_URL_TOKEN = r"(?P<path>/(?:webhooks|interactions)/[^/\s?#]+/)[^/\s?#\"'<>]+"
# Our lines name what they are about as "job=… guild=… user=…" (STYLE.md); JSON lines carry them as fields too.
ID_FIELDS = ("job", "guild", "user", "request")
_ID = re.compile(r"(?<![\w.])(?P<name>job|guild|user|request)=(?P<value>[\w-]+)")


class Redactor:
    """Replace known secrets, interaction tokens and the token segment of webhook URLs in any text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        known = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        patterns = [re.escape(s) for s in known]  # longest first: a secret holding another is masked whole
        self._secrets = re.compile("|".join(patterns)) if patterns else None
        self._tokens = re.compile(f"{_URL_TOKEN}|{_INTERACTION_TOKEN}")

    def __call__(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub(MASK, text)
        return self._tokens.sub(lambda m: (m["path"] or "") + MASK, text)


class RedactingFormatter(logging.Formatter):
    """The standard text format, scrubbed after the message, traceback and stack are joined."""

    def __init__(self, redact: Redactor, fmt: str = FORMAT) -> None:
        super().__init__(fmt)
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        # logging caches the unscrubbed traceback in record.exc_text; scrubbing the joined result covers it,
        # an exception's args (str(exc)) and stack_info alike.
        return self.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the job, guild, user and request ids the message
    names (or ``extra=`` gives), and the traceback; every string scrubbed as in the text format."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        message = self.redact(record.getMessage())
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": self.redact(record.name),
            "message": message,
        }
        for found in _ID.finditer(message):  # read after scrubbing: a masked value is no id
            if found["value"] != "None":
                line.setdefault(found["name"], found["value"])  # the first mention wins: "job=… cancelled by user=…"
        for name in ID_FIELDS:
            if (value := getattr(record, name, None)) is not None:  # extra={"job": ...}
                line[name] = self.redact(str(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)  # cached as logging does; scrubbed when written
        if record.exc_text:
            line["exception"] = self.redact(record.exc_text)
        if record.stack_info:
            line["stack"] = self.redact(self.formatStack(record.stack_info))
        return json.dumps(line, ensure_ascii=False)


def secrets_of(settings: Settings) -> list[str]:
    """Every secret the settings hold: the tokens and keys, and a password in ``storage.url``."""
    secrets = [settings.discord.token.get_secret_value(), settings.fal.key.get_secret_value()]
    if settings.web.secret is not None:
        secrets.append(settings.web.secret.get_secret_value())
    if settings.storage.url is not None:
        secrets.extend(url_passwords(settings.storage.url.get_secret_value()))
    return secrets


def setup_logging(settings: Settings) -> None:
    """Send every log line to stderr through one redacting handler (text or JSON), at the configured level."""
    redact = Redactor(secrets_of(settings))
    handler = logging.StreamHandler()
    formatter = JsonFormatter(redact) if settings.logging.format == "json" else RedactingFormatter(redact)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.logging.level)
    for noisy in ("discord", "aiosqlite"):  # their DEBUG lines carry request bodies and SQL parameters (tokens)
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
