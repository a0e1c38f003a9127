"""Signed, expiring links to the mask painter (SPEC 12) and their key; never shows the key in a repr or a log."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from bot.errors import UserFacingError

log = logging.getLogger(__name__)

SECRET_FILE = "paint-secret"
SECRET_BYTES = 32
MIN_SECRET_BYTES = 16  # a shorter web.secret could be guessed offline from one link
_DOMAIN = b"fluxpaint/paint-link/v1\x00"  # a key reused for something else never signs a valid link
_PAYLOAD = struct.Struct(">16sQQ")  # job id (the uuid4's 16 bytes), member id, expiry in unix seconds
_MAC_BYTES = hashlib.sha256().digest_size
TOKEN_CHARS = len(base64.urlsafe_b64encode(bytes(_PAYLOAD.size + _MAC_BYTES)).rstrip(b"="))
_TOKEN = re.compile(rf"[A-Za-z0-9_-]{{{TOKEN_CHARS}}}")
_JOB_ID = re.compile(r"[0-9a-f]{32}")


class PaintLinkError(UserFacingError):
    """A painter link that cannot be used; the web page shows the message as is."""


class ForgedLinkError(PaintLinkError):
    """Not a link the bot made: bad format or a MAC that does not match (HTTP 403)."""

    def __init__(self) -> None:
        super().__init__("This painting link is not valid. Open the link from the bot's message in Discord again.")


class ExpiredLinkError(PaintLinkError):
    """A genuine link past its expiry (HTTP 410)."""

    def __init__(self) -> None:
        super().__init__("This painting link has expired. Run /inpaint again to get a new one.")


class UsedLinkError(PaintLinkError):
    """A genuine link whose job no longer waits for a mask: used, cancelled, expired or pruned (HTTP 410)."""

    def __init__(self) -> None:
        super().__init__("This painting link was used already, or its job no longer waits for a mask.")


class PaintSecretError(Exception):
    """The key of the painter links cannot be had: web.secret too short, or the kept key file is damaged."""


@dataclass(frozen=True, slots=True)
class PaintGrant:
    """What a valid link allows: painting the mask of ``job_id`` for member ``user_id`` until ``expires_at``."""

    job_id: str  # uuid4().hex
    user_id: int
    expires_at: int  # unix seconds


class PaintLinks:
    """Makes and checks the painter links: ``public_url/paint/<token>``, the token signed with HMAC-SHA256."""

    def __init__(self, secret: bytes, *, ttl_s: float, public_url: str, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise PaintSecretError(f"the painter link key is {len(secret)} bytes; it needs at least {MIN_SECRET_BYTES}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, not {ttl_s}")
        self._secret = secret
        self._ttl_s = ttl_s
        self._public_url = public_url.rstrip("/")
        self._clock = clock

    def __repr__(self) -> str:
        return f"PaintLinks(public_url={self._public_url!r}, ttl_s={self._ttl_s:g})"

    def now(self) -> float:
        """The clock the links expire by, in unix seconds."""
        return self._clock()

    def link(self, job_id: str, user_id: int) -> str:
        """The address member ``user_id`` opens to paint the mask of ``job_id``; valid for ``ttl_s`` from now."""
        return f"{self._public_url}/paint/{self.token(job_id, user_id)}"

    def token(self, job_id: str, user_id: int) -> str:
        """The signed token of a link (the last part of its path)."""
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(f"job id {job_id!r} is not 32 lower-case hex digits")
        if not 0 <= user_id < 2**64:
            raise ValueError(f"member id {user_id} is not a Discord id")
        expires_at = int(self._clock() + self._ttl_s)
        payload = _PAYLOAD.pack(bytes.fromhex(job_id), user_id, expires_at)
        return base64.urlsafe_b64encode(payload + self._mac(payload)).rstrip(b"=").decode("ascii")

    def verify(self, token: str) -> PaintGrant:
        """The grant a token carries.

        Raises:
            ForgedLinkError: the token is malformed or its MAC does not match (checked before the expiry).
            ExpiredLinkError: the token is genuine but past its expiry.
        """
        raw = _decode(token)
        if raw is None:
            raise ForgedLinkError()
        payload, mac = raw[: _PAYLOAD.size], raw[_PAYLOAD.size :]
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise ForgedLinkError()
        job, user_id, expires_at = _PAYLOAD.unpack(payload)
        if self._clock() >= expires_at:
            raise ExpiredLinkError()
        return PaintGrant(job_id=job.hex(), user_id=user_id, expires_at=expires_at)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.digest(self._secret, _DOMAIN + payload, hashlib.sha256)


def _decode(token: str) -> bytes | None:
    """The token's bytes, or None unless it is exactly the canonical unpadded base64url of a token."""
    if not _TOKEN.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except binascii.Error:
        return None
    # unused low bits in the last character would give several spellings of one token
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        return None
    return raw


def load_or_create_secret(data_dir: Path, configured: SecretStr | None) -> bytes:
    """The key of the painter links: ``web.secret``, else the one kept in ``data_dir/paint-secret``, made once.

    Synchronous file I/O: async code calls it through ``asyncio.to_thread``.

    Raises:
        PaintSecretError: web.secret is too short, or the kept key cannot be read or is damaged.
    """
    if configured is not None:
        key = configured.get_secret_value().encode("utf-8")
        if len(key) < MIN_SECRET_BYTES:
            raise PaintSecretError(
                f"web.secret is {len(key)} bytes long; use at least {MIN_SECRET_BYTES} random characters "
                "(or leave it unset and one is generated)"
            )
        return key
    path = data_dir / SECRET_FILE
    try:
        return _read_secret(path)
    except FileNotFoundError:
        return _create_secret(path)


def _read_secret(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode & 0o777
            key = file.read(SECRET_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise PaintSecretError(f"cannot read the painter link key {path}: {exc.strerror or exc}") from exc
    if len(key) != SECRET_BYTES:
        raise PaintSecretError(
            f"{path} is damaged: it should hold {SECRET_BYTES} bytes. Delete it and a new key is made "
            "(painter links already sent stop working)"
        )
    if mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("painter link key %s could be read by others (mode %o); it is now 0600", path, mode)
    return key


def _create_secret(path: Path) -> bytes:
    key = secrets.token_bytes(SECRET_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(key)
            file.flush()
            os.fsync(file.fileno())
        try:
            # link, not replace: never overwrites, so a process that loses a race to make the key reads the winner's
            os.link(temp, path)
        except FileExistsError:
            return _read_secret(path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise PaintSecretError(f"cannot write the painter link key {path}: {exc.strerror or exc}") from exc
    finally:
        temp.unlink(missing_ok=True)
    log.info("painter link key made and kept in %s", path)
    return key


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
