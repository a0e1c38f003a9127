"""Capped downloads from allow-listed hosts; never sends credentials and never follows a redirect off the list."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import urljoin, urlsplit

import aiohttp

from bot.config import is_loopback
from bot.errors import UserFacingError

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
_CHUNK = 64 * 1024


class DownloadError(UserFacingError):
    """A file could not be fetched; the message names what and why."""


class DownloadTooLargeError(DownloadError):
    """The file is over its byte cap; nothing beyond the cap was read."""


class DownloadTransientError(DownloadError):
    """A timeout, a dropped connection or a 5xx/429: the same download may work later."""


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def host_allowed(url: str, allowed_hosts: Iterable[str]) -> bool:
    """Whether ``url`` is https (or http on loopback) on a listed ``host`` or ``host:port``."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host:
        return False
    if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback(host)):
        return False
    try:
        port = parts.port
    except ValueError:
        return False
    default_port = 443 if parts.scheme == "https" else 80
    for entry in allowed_hosts:
        entry_host, _, entry_port = entry.lower().rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_host != host:
            continue
        if (int(entry_port) if entry_port else default_port) == (port or default_port):
            return True
    return False


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    *,
    allowed_hosts: Iterable[str],
    max_bytes: int,
    timeout_s: float,
    what: str,
) -> bytes:
    """Download ``url`` in full, at most ``max_bytes``.

    Raises:
        DownloadTooLargeError: the file is larger than ``max_bytes`` (refused from the header when possible).
        DownloadError: host not allowed, HTTP error, timeout or dropped connection.
    """
    allowed = list(allowed_hosts)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    for _ in range(MAX_REDIRECTS + 1):
        if not host_allowed(url, allowed):
            log.warning("refused download of %s from host %s", what, urlsplit(url).hostname)
            raise DownloadError(f"The {what} comes from a host this bot doesn't download from.")
        try:
            async with session.get(url, allow_redirects=False, timeout=timeout) as resp:
                if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                    url = urljoin(url, resp.headers["Location"])
                    continue
                if resp.status in (408, 429) or resp.status >= 500:
                    raise DownloadTransientError(f"The {what} could not be downloaded (HTTP {resp.status}).")
                if resp.status != 200:
                    raise DownloadError(f"The {what} could not be downloaded (HTTP {resp.status}).")
                if resp.content_length is not None and resp.content_length > max_bytes:
                    raise DownloadTooLargeError(
                        f"The {what} is {_mb(resp.content_length)}; the limit is {_mb(max_bytes)}."
                    )
                body = bytearray()
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > max_bytes:
                        raise DownloadTooLargeError(f"The {what} is larger than the limit of {_mb(max_bytes)}.")
                return bytes(body)
        except TimeoutError as exc:
            raise DownloadTransientError(f"Downloading the {what} timed out after {timeout_s:g} s.") from exc
        except aiohttp.ClientError as exc:
            raise DownloadTransientError(f"The {what} could not be downloaded (connection problem).") from exc
    raise DownloadError(f"The {what} could not be downloaded (too many redirects).")
