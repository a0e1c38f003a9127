"""What both job stores share besides SQL: a job as a row, budget texts for the admin log, the budget rule; no I/O."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import pydantic

from bot.config import LoraEntry, StyleEntry
from bot.models import Job
from bot.store_schema import BudgetChange, GuildSettings

log = logging.getLogger("bot.store")  # one logger for the store, whichever of its modules speaks

USD_EPSILON = 1e-9  # a budget that fits exactly must pass despite float rounding


def url_passwords(url: str) -> list[str]:
    """Every password a database URL holds: in its user part and as ``?password=`` (asyncpg takes both), as
    written and decoded."""
    parts = urlsplit(url)
    found = [parts.password] if parts.password else []
    found += [value for key, value in parse_qsl(parts.query, keep_blank_values=True) if key == "password" and value]
    return list(dict.fromkeys([*found, *(unquote(p) for p in found)]))


def masked_url(url: str) -> str:
    """The URL without its passwords, for reprs and logs."""
    parts = urlsplit(url)
    query = urlencode(
        [(key, "***" if key == "password" else value) for key, value in parse_qsl(parts.query, keep_blank_values=True)],
        safe="*",
    )
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def dump_job(job: Job, now: datetime) -> str:
    """The job as the JSON of its row."""
    data = job.model_dump(mode="json")
    # The token is kept only while it can still be used: a finished job or an expired token has no use for it.
    usable = not job.state.finished and now < job.origin.token_expires_at
    data["origin"]["interaction_token"] = job.origin.interaction_token.get_secret_value() if usable else ""
    return json.dumps(data, separators=(",", ":"))


def load_job(job_id: str, data: str) -> Job | None:
    """The job of a row, or None (logged) when this version cannot read it."""
    try:
        return Job.model_validate_json(data)
    except pydantic.ValidationError as exc:  # str(exc) would quote the row, token included
        log.error("job=%s stored row is unreadable (%d validation errors); skipped", job_id, exc.error_count())
        return None


def over_budget(spent_usd: float, estimate_usd: float, budget_usd: float) -> bool:
    """Whether a job's estimate on top of what is spent goes past the budget."""
    return spent_usd + estimate_usd > budget_usd + USD_EPSILON


def _budget_text(is_set: bool, usd: float | None) -> str:
    if not is_set:
        return "default"
    return "no limit" if usd is None else f"{usd:.2f} USD"


def with_budget(s: GuildSettings, which: str, change: float | BudgetChange | None) -> GuildSettings:
    """The guild's settings with one budget changed as ``set_budgets`` describes."""
    if change is BudgetChange.UNCHANGED:
        return s
    if change is BudgetChange.DEFAULT:
        return s.model_copy(update={f"{which}_set": False, f"{which}_usd": None})
    usd = None if isinstance(change, BudgetChange) or change is None else float(change)
    return s.model_copy(update={f"{which}_set": True, f"{which}_usd": usd})


def budget_changes(old: GuildSettings, new: GuildSettings) -> list[str]:
    """What changed between two budget states, as the admin log words it ("member daily: default → 2.00 USD")."""
    before, after = _budget_texts(old), _budget_texts(new)
    return [f"{label}: {before[label]} → {text}" for label, text in after.items() if before[label] != text]


def _budget_texts(s: GuildSettings) -> dict[str, str]:
    return {
        "member daily": _budget_text(s.user_daily_set, s.user_daily_usd),
        "server monthly": _budget_text(s.guild_monthly_set, s.guild_monthly_usd),
    }


def check_budget(value: float | BudgetChange | None) -> None:
    """Refuse an amount that cannot be a budget.

    Raises:
        ValueError: a negative or non-finite amount.
    """
    if isinstance(value, float | int) and (not math.isfinite(value) or value < 0):
        raise ValueError("a budget is a finite amount of USD, at least 0")


def read_catalog(guild_id: int, rows: Sequence[Sequence[Any]]) -> tuple[list[LoraEntry], list[StyleEntry]]:
    """Catalog rows (kind, name, data) as entries; one this version cannot read is logged and left out."""
    found_loras: list[LoraEntry] = []
    found_styles: list[StyleEntry] = []
    for kind, name, data in rows:
        try:
            if kind == "lora":
                found_loras.append(LoraEntry.model_validate_json(data))
            else:
                found_styles.append(StyleEntry.model_validate_json(data))
        except pydantic.ValidationError:
            log.error("guild=%s catalog %s %s cannot be read; left out", guild_id, kind, name)
    return found_loras, found_styles
