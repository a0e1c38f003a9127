"""Typed settings from a TOML file and the environment; never builds settings at import time."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
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
LORA_HOSTS = ("huggingface.co", "civitai.com", "fal.media", "v3.fal.media", "storage.googleapis.com")
LORA_NAME_RULE = "1 to 32 characters of a-z, 0-9, - and _"
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


def _listen(entry: str) -> str:
    host, _, port = entry.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r} is not host:port (for example 127.0.0.1:8080)")
    return f"{host}:{int(port)}"


def _lora_name(name: str) -> str:
    # names are lower-cased rather than refused: members type "Pixel-Art" and mean pixel-art
    name = name.strip().lower()
    if not re.fullmatch(r"[a-z0-9_-]{1,32}", name):
        raise ValueError(f"{name!r} is not a name: use {LORA_NAME_RULE}")
    return name


def lora_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a LoRA link (https, a host, no port, credentials or spaces), or None."""
    if any(char.isspace() for char in path):
        return "a link may not contain spaces"
    try:
        parts = urlsplit(path)
        port = parts.port
    except ValueError:
        return "this is not a link"
    if parts.scheme.lower() != "https":
        return "the link must start with https://"
    if not parts.hostname:
        return "the link has no host"
    if port is not None or parts.username is not None:
        return "the link may not name a port or a user"
    return None


def lora_host(path: str) -> str:
    """The host of a LoRA link, lower-case and without a trailing dot."""
    return (urlsplit(path).hostname or "").rstrip(".")


def host_allowed(host: str, allowed_hosts: Sequence[str]) -> bool:
    """``host`` is one of ``allowed_hosts`` or a subdomain of one (``cdn-lfs.huggingface.co``)."""
    return any(host == allowed or host.endswith("." + allowed) for allowed in allowed_hosts)


def _lora_path(path: str) -> str:
    if problem := lora_path_problem(path):
        raise ValueError(problem)
    return path


def _lora_host_entry(entry: str) -> str:
    host = entry.strip().lower().rstrip(".")
    if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)*", host):
        raise ValueError(f"{entry!r} is not a host name (no scheme, port or path: huggingface.co)")
    return host


def _prompt_template(template: str) -> str:
    rest = template.replace("{prompt}", "")
    if template.count("{prompt}") != 1 or "{" in rest or "}" in rest:
        raise ValueError("must hold {prompt} exactly once (where the member's prompt goes) and no other { or }")
    return template


HttpsUrl = Annotated[str, AfterValidator(_https_url)]
WssUrl = Annotated[str, AfterValidator(_wss_url)]
HostEntry = Annotated[str, AfterValidator(_host_entry)]
ListenAddress = Annotated[str, AfterValidator(_listen)]
LoraName = Annotated[str, AfterValidator(_lora_name)]
LoraPath = Annotated[str, Field(max_length=1000), AfterValidator(_lora_path)]
LoraHostEntry = Annotated[str, AfterValidator(_lora_host_entry)]
TriggerWord = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)]
PromptTemplate = Annotated[str, Field(max_length=1000), AfterValidator(_prompt_template)]


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
    # Several processes on one PostgreSQL store (SPEC 13): this process runs these shards of shard_count.
    shard_ids: list[int] | None = None
    shard_count: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _shards(self) -> DiscordSettings:
        if self.shard_ids is not None:
            if self.shard_count is None:
                raise ValueError("discord.shard_ids needs discord.shard_count")
            if not self.shard_ids or any(not 0 <= i < self.shard_count for i in self.shard_ids):
                raise ValueError(f"discord.shard_ids must be between 0 and shard_count - 1 ({self.shard_count - 1})")
            if len(self.shard_ids) != 1:  # one gateway connection per process: run a process for each shard
                raise ValueError("discord.shard_ids holds one shard per process; start one process for each shard")
        return self


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
    max_loras: int = Field(4, ge=1, le=10)  # LoRAs per job, a style's included (SPEC 9)


class MaskSettings(Section):
    segment_endpoint: str = Field("fal-ai/evf-sam", pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[A-Za-z0-9_./-]+)?$")
    segment_price_usd: float = Field(0.002, ge=0, le=10)


class UiSettings(Section):
    # Who may press Reroll, Edit and Use on a result (SPEC 10): any member who may use the bot, or its requester.
    iterate_by: Literal["anyone", "requester"] = "anyone"
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
    # sqlite:///path (default: jobs.sqlite3 in data_dir) or postgresql://user@host/db for several processes (SPEC 13)
    url: SecretStr | None = None  # a secret: a PostgreSQL URL may hold the password

    @field_validator("url")
    @classmethod
    def _store_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and not re.fullmatch(r"sqlite:///.+|postgres(ql)?://.+", url.get_secret_value()):
            raise ValueError("storage.url must be sqlite:///path or postgresql://user@host/database")
        return url

    lease_s: float = Field(30.0, ge=2, le=3600)  # PostgreSQL: a dead process's jobs are taken over after this
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
    format: Literal["text", "json"] = "text"  # json: one object per line with job, guild and user ids
    log_prompts: bool = False
    # The event loop is probed for stalls; one this long is logged as a warning (a blocking call on the loop).
    loop_stall_warn_ms: float = Field(100.0, gt=0, allow_inf_nan=False)


class WebSettings(Section):
    """The optional mask painter (SPEC 12): a page members open from a link button."""

    enabled: bool = False
    listen: ListenAddress = "127.0.0.1:8080"
    public_url: HttpsUrl | None = None  # the https address members reach, usually a reverse proxy; http on loopback
    link_ttl_s: float = Field(900.0, ge=60, le=86400)
    secret: SecretStr | None = None  # HMAC key of the links; unset: one is generated once and kept in data_dir
    max_mask_bytes: int = Field(8 * MiB, ge=64 * 1024, le=64 * MiB)

    @model_validator(mode="after")
    def _public_url_when_enabled(self) -> WebSettings:
        if self.enabled and self.public_url is None:
            raise ValueError("web.public_url is needed when web.enabled is true: it is the address in the links")
        return self


class OpsSettings(Section):
    """Health and metrics endpoints (SPEC 13); off while listen is unset."""

    listen: ListenAddress | None = None  # e.g. 127.0.0.1:9108


class CatalogSettings(Section):
    """Which LoRA links may be used: SPEC 9's ``loras.*`` (TOML cannot hold ``[loras]`` next to ``[[loras]]``)."""

    allowed_hosts: list[LoraHostEntry] = Field(default_factory=lambda: list(LORA_HOSTS))  # subdomains count too
    allow_urls: bool = False  # members may give an https link on allowed_hosts instead of a name


class LoraEntry(Section):
    """A LoRA members pick by name; fal downloads ``path`` at request time, the bot never fetches it."""

    name: LoraName
    path: LoraPath  # its host is checked against catalog.allowed_hosts by Settings (or bot.loras for servers)
    scale: float = Field(1.0, ge=0, le=4, allow_inf_nan=False)
    trigger_words: list[TriggerWord] = Field(default_factory=list, max_length=10)
    description: Description = ""


class StyleLora(Section):
    """A catalog LoRA a style uses; no scale means the LoRA's own."""

    name: LoraName
    scale: float | None = Field(None, ge=0, le=4, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data  # loras = ["pixel-art", {name = "x", scale = 0.5}]


class StyleEntry(Section):
    """A preset: a prompt template, LoRAs and defaults for the options the member leaves out."""

    name: LoraName
    description: Description = ""
    prompt: PromptTemplate = "{prompt}"
    loras: list[StyleLora] = Field(default_factory=list, max_length=10)
    strength: float | None = Field(None, ge=0.01, le=1.0)
    num_inference_steps: int | None = Field(None, ge=1, le=50)
    guidance_scale: float | None = Field(None, ge=0, le=35)

    @field_validator("loras")
    @classmethod
    def _each_lora_once(cls, loras: list[StyleLora]) -> list[StyleLora]:
        names = [lora.name for lora in loras]
        if twice := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"{', '.join(twice)} appears more than once; a style uses each LoRA once")
        return loras


def _catalog_problems(settings: Settings) -> list[tuple[tuple[str | int, ...], str]]:
    """The [[loras]] and [[styles]] problems only the whole config can see: names, hosts, the LoRAs styles use."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    hosts = settings.catalog.allowed_hosts
    by_name: dict[str, LoraEntry] = {}
    for i, lora in enumerate(settings.loras):
        if lora.name in by_name:
            problems.append((("loras", i, "name"), f"{lora.name!r} names two [[loras]] entries; names must differ"))
        by_name.setdefault(lora.name, lora)
        if not host_allowed(host := lora_host(lora.path), hosts):
            problems.append(
                (("loras", i, "path"), f"the host {host} is not on catalog.allowed_hosts ({', '.join(hosts)})")
            )
    style_names: set[str] = set()
    for i, style in enumerate(settings.styles):
        if style.name in style_names:
            problems.append((("styles", i, "name"), f"{style.name!r} names two [[styles]] entries; names must differ"))
        style_names.add(style.name)
        if len(style.loras) > settings.limits.max_loras:
            problems.append(
                (
                    ("styles", i, "loras"),
                    f"{len(style.loras)} LoRAs, more than limits.max_loras ({settings.limits.max_loras})",
                )
            )
        paths: dict[str, str] = {}
        for j, used in enumerate(style.loras):
            if (entry := by_name.get(used.name)) is None:
                problems.append(
                    (
                        ("styles", i, "loras", j),
                        f"{used.name!r} is not the name of a [[loras]] entry (config styles use config LoRAs)",
                    )
                )
            elif entry.path in paths:
                problems.append(
                    (("styles", i, "loras", j), f"{used.name!r} has the same path as {paths[entry.path]!r}")
                )
            else:
                paths[entry.path] = used.name
    return problems


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
    catalog: CatalogSettings = CatalogSettings()
    web: WebSettings = WebSettings()
    ops: OpsSettings = OpsSettings()
    loras: tuple[LoraEntry, ...] = ()
    styles: tuple[StyleEntry, ...] = ()

    @model_validator(mode="after")
    def _poll_bounds(self) -> Settings:
        if self.fal.max_poll_interval_s < self.fal.poll_interval_s:
            raise ValueError("fal.max_poll_interval_s must be at least fal.poll_interval_s")
        return self

    @model_validator(mode="after")
    def _catalog(self) -> Settings:
        if problems := _catalog_problems(self):  # one line per bad key, each at its own place
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("catalog", "{problem}", {"problem": text}), loc=loc, input=None
                    )
                    for loc, text in problems
                ],
            )
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
