"""Typed settings from a TOML file and the environment; never builds settings at import time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DISCORD_CDN_HOSTS = ("cdn.discordapp.com", "media.discordapp.net")
FAL_MEDIA_HOSTS = ("fal.media", "v2.fal.media", "v3.fal.media", "v3b.fal.media")
MiB = 1024 * 1024


class ConfigError(Exception):
    """The configuration is invalid; ``lines`` holds one message per bad key."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def is_loopback(host: str | None) -> bool:
    return (host or "").strip("[]").lower() in LOOPBACK_HOSTS


def _secure_url(url: str, *, secure: str, plain: str) -> str:
    """Accept ``secure://`` anywhere and ``plain://`` only on loopback hosts."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"{url!r} is not an absolute URL")
    if parts.scheme == secure or (parts.scheme == plain and is_loopback(parts.hostname)):
        return url.rstrip("/")
    raise ValueError(f"must use {secure}:// ({plain}:// is accepted only for 127.0.0.1 and localhost)")


def _https_url(url: str) -> str:
    return _secure_url(url, secure="https", plain="http")


def _wss_url(url: str) -> str:
    return _secure_url(url, secure="wss", plain="ws")


def _host_entry(entry: str) -> str:
    entry = entry.strip().lower()
    host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
    if not host or "/" in host or (port and not port.isdigit()):
        raise ValueError(f"{entry!r} is not a host or host:port")
    return entry


HttpsUrl = Annotated[str, AfterValidator(_https_url)]
WssUrl = Annotated[str, AfterValidator(_wss_url)]
HostEntry = Annotated[str, AfterValidator(_host_entry)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DiscordSettings(Section):
    token: SecretStr
    guild_ids: list[int] = Field(default_factory=list)
    attachment_hosts: list[HostEntry] = Field(default_factory=lambda: list(DISCORD_CDN_HOSTS))
    # Discord refuses a request over 25 MiB, whatever a boosted server's per-file limit; results are split and
    # re-encoded to stay under this (the JSON part needs a little room).
    max_request_bytes: int = Field(24 * MiB, ge=64 * 1024, le=25 * MiB - 256 * 1024)
    # All requests to Discord together, per second: Discord's global limit is 50 (for every process of the bot).
    max_requests_per_s: int = Field(40, ge=1, le=50)
    # For the end-to-end rig only: point discord.py at a fake Discord on loopback.
    api_base_url: HttpsUrl | None = None
    gateway_url: WssUrl | None = None


class FalSettings(Section):
    key: SecretStr
    base_url: HttpsUrl = "https://queue.fal.run"
    auth_scheme: Literal["Key", "Bearer"] = "Key"
    endpoint: str = Field("fal-ai/flux-lora/inpainting", pattern=r"^[\w.-]+/[\w.-]+(/[\w./-]+)?$")
    media_hosts: list[HostEntry] = Field(default_factory=lambda: list(FAL_MEDIA_HOSTS))
    price_per_megapixel: float = Field(0.035, ge=0)
    max_concurrent: int = Field(2, ge=1, le=1000)
    upload_inputs: bool = False
    rest_base_url: HttpsUrl = "https://rest.fal.ai"
    status_mode: Literal["stream", "poll"] = "stream"
    poll_interval_s: float = Field(1.0, ge=0.05)
    max_poll_interval_s: float = Field(10.0, ge=0.05)
    connect_timeout_s: float = Field(10.0, gt=0)
    request_timeout_s: float = Field(60.0, gt=0)
    submit_timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(6, ge=0, le=20)
    # The deadline of a job at fal from its submit: past it the job is cancelled there and its slot freed. Sent as
    # fal's X-Fal-Request-Timeout too (a deadline for the job to start).
    job_timeout_s: float = Field(3600.0, gt=1, le=7 * 86400)
    # The pause before a step that failed for a passing reason is tried again (status, result, download, post),
    # and before a submit that fal turned away (429) goes back in line.
    retry_pause_s: float = Field(30.0, ge=0.01, le=3600)

    @property
    def app_id(self) -> str:
        return app_id(self.endpoint)


def app_id(endpoint: str) -> str:
    """``owner/app`` of an endpoint: request routes drop the endpoint's sub-path."""
    return "/".join(endpoint.split("/")[:2])


class LimitSettings(Section):
    max_megapixels: float = Field(2.0, gt=0, le=16)
    max_decode_pixels: int = Field(50_000_000, gt=0)
    max_input_bytes: int = Field(20 * MiB, gt=0)
    max_output_bytes: int = Field(50 * MiB, gt=0)
    download_timeout_s: float = Field(30.0, gt=0)
    max_prompt_chars: int = Field(2000, ge=1, le=2000)
    max_num_images: int = Field(4, ge=1, le=4)
    max_num_inference_steps: int = Field(50, ge=1, le=50)
    max_jobs_per_user: int = Field(2, ge=1)
    mask_threshold: int = Field(128, ge=1, le=255)
    crop_to_mask: bool = True  # send fal only the part around the mask (SPEC 11); false sends the whole image
    crop_padding: float = Field(0.25, ge=0, le=4)  # around the mask's bounding box, as a share of its size
    # Downloads and decodes at once: 50 members posting 20 MiB photos together must not exhaust memory.
    max_parallel_prepare: int = Field(default_factory=lambda: 2 * (os.cpu_count() or 1), ge=1, le=256)


class MaskSettings(Section):
    segment_endpoint: str = Field("fal-ai/evf-sam", pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[A-Za-z0-9_./-]+)?$")
    segment_price_usd: float = Field(0.002, ge=0, le=10)


class UiSettings(Section):
    token_ttl_s: float = Field(15 * 60, gt=0, le=15 * 60, allow_inf_nan=False)
    token_margin_s: float = Field(60.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _gone_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "min_edit_interval_s" in data:
            raise ValueError(
                "ui.min_edit_interval_s is gone: edits now follow each message's limit from Discord's headers and "
                "discord.max_requests_per_s; delete the key"
            )
        return data

    @model_validator(mode="after")
    def _margin_inside_ttl(self) -> UiSettings:
        if self.token_margin_s >= self.token_ttl_s:
            raise ValueError("ui.token_margin_s must be less than ui.token_ttl_s, or the token is never used")
        return self


class StorageSettings(Section):
    data_dir: Path = Path("data")
    keep_finished_days: float = Field(30.0, gt=0)
    prune_interval_s: float = Field(3600.0, ge=60)


class BudgetSettings(Section):
    user_daily_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    guild_monthly_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    exempt_role_ids: list[int] = Field(default_factory=list)
    # The owner's ceilings: no server's admins may set (or default to) more than these; None: no ceiling.
    max_user_daily_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    max_guild_monthly_usd: float | None = Field(None, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _defaults_under_ceilings(self) -> BudgetSettings:
        pairs = (
            ("user_daily_usd", self.user_daily_usd, self.max_user_daily_usd),
            ("guild_monthly_usd", self.guild_monthly_usd, self.max_guild_monthly_usd),
        )
        for name, value, ceiling in pairs:
            if ceiling is not None and value is not None and value > ceiling:
                raise ValueError(f"budgets.{name} ({value:g}) is above the owner's ceiling budgets.max_{name}")
        return self

    def capped(self, which: Literal["user_daily", "guild_monthly"], value: float | None) -> float | None:
        """``value`` held to the owner's ceiling; no limit (None) becomes the ceiling when there is one."""
        ceiling = self.max_user_daily_usd if which == "user_daily" else self.max_guild_monthly_usd
        if ceiling is None:
            return value
        return ceiling if value is None else min(value, ceiling)


class AccessSettings(Section):
    guild_ids: list[int] = Field(default_factory=list)
    channel_ids: list[int] = Field(default_factory=list)
    role_ids: list[int] = Field(default_factory=list)


class SafetySettings(Section):
    allow_nsfw_in_age_restricted: bool = False
    blocked_terms: list[str] = Field(default_factory=list)


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_prompts: bool = False
    # The event loop is probed for stalls; one this long is logged as a warning (a blocking call on the loop).
    loop_stall_warn_ms: float = Field(100.0, gt=0, allow_inf_nan=False)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLUXPAINT_", env_nested_delimiter="__", extra="forbid", frozen=True, toml_file="config.toml"
    )

    discord: DiscordSettings
    fal: FalSettings
    limits: LimitSettings = LimitSettings()
    masks: MaskSettings = MaskSettings()
    ui: UiSettings = UiSettings()
    storage: StorageSettings = StorageSettings()
    budgets: BudgetSettings = BudgetSettings()
    access: AccessSettings = AccessSettings()
    safety: SafetySettings = SafetySettings()
    logging: LoggingSettings = LoggingSettings()

    @model_validator(mode="after")
    def _poll_bounds(self) -> Settings:
        if self.fal.max_poll_interval_s < self.fal.poll_interval_s:
            raise ValueError("fal.max_poll_interval_s must be at least fal.poll_interval_s")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # earlier sources win: FLUXPAINT_FAL__KEY beats FAL_KEY, which beats the file
        return init_settings, env_settings, _PlainSecretsSource(settings_cls), TomlConfigSettingsSource(settings_cls)


class _PlainSecretsSource(EnvSettingsSource):
    """The conventional ``DISCORD_TOKEN`` and ``FAL_KEY`` variables, mapped onto their sections."""

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for var, section, key in (("DISCORD_TOKEN", "discord", "token"), ("FAL_KEY", "fal", "key")):
            if value := self.env_vars.get(var.lower()):
                values[section] = {key: value}
        return values


def config_path(explicit: str | os.PathLike[str] | None = None, env: Mapping[str, str] = os.environ) -> Path:
    return Path(explicit or env.get("FLUXPAINT_CONFIG") or "config.toml")


def load_settings(path: str | os.PathLike[str] | None = None, *, require_discord: bool = True) -> Settings:
    """Read the TOML file at ``path`` (a missing file means defaults) and the environment.

    ``require_discord=False`` (the terminal ``inpaint`` command) lets a user with only a fal key run.

    Raises:
        ConfigError: one line per invalid or missing key.
    """
    toml_path = config_path(path)

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=toml_path)

    try:
        return _FromFile()
    except ValidationError as exc:
        lines = describe_errors(exc)
        if require_discord or not all(
            line.startswith(("discord: missing", "discord.token: missing")) for line in lines
        ):
            raise ConfigError(lines) from None
    except (OSError, ValueError) as exc:  # unreadable file or TOML syntax error
        raise ConfigError([f"{toml_path}: {exc}"]) from None
    return _FromFile(discord={"token": "unused-by-the-terminal-command"})


_HINTS = {
    ("discord",): "set DISCORD_TOKEN (or discord.token in the config file)",
    ("fal",): "set FAL_KEY (or fal.key in the config file)",
    ("discord", "token"): "set DISCORD_TOKEN (or discord.token in the config file)",
    ("fal", "key"): "set FAL_KEY (or fal.key in the config file)",
}


def describe_errors(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple(str(part) for part in error["loc"])
        key = ".".join(loc) or "config"
        if error["type"] == "missing" and loc in _HINTS:
            lines.append(f"{key}: missing; {_HINTS[loc]}")
        elif error["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key (check the spelling against config.example.toml)")
        else:
            lines.append(f"{key}: {error['msg'].removeprefix('Value error, ')}")
    return lines


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets shown as ``**********``."""
    return settings.model_dump(mode="json")
