"""Logging set-up: scrub secrets and Discord tokens from every line's final text; never logs by itself."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from bot.config import Settings

MASK = "**********"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MIN_SECRET_LENGTH = 6  # a shorter "secret" would blank ordinary words

# An interaction token is base64url of "interaction:<id>:..."; discord.py's DEBUG lines and aiohttp's errors
# carry it bare, and it grants 15 minutes of replies in the member's channel.
_INTERACTION_TOKEN = r"aW50ZXJhY3Rpb246[A-Za-z0-9_.=-]+"
# Webhook and interaction URLs hold a token as the segment after the id, whatever the token looks like.
_URL_TOKEN = r"(?P<path>/(?:webhooks|interactions)/[^/\s?#]+/)[^/\s?#\"'<>]+"


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


def setup_logging(settings: Settings) -> None:
    """Send every log line to stderr through one redacting handler, at the configured level."""
    redact = Redactor([settings.discord.token.get_secret_value(), settings.fal.key.get_secret_value()])
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.logging.level)
    for noisy in ("discord", "aiosqlite"):  # their DEBUG lines carry request bodies and SQL parameters (tokens)
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
