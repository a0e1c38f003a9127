"""Per-guild admin state in force: pause, bans, budgets; and the texts of the /fluxpaint admin commands."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from bot.config import Settings
from bot.models import Job, utcnow
from bot.progress import usd
from bot.store import Store
from bot.store_schema import DEFAULT, UNCHANGED, BudgetChange, GuildSettings, MemberFacts

log = logging.getLogger(__name__)

PAUSED = "This server's admins have paused /inpaint for now."
BANNED = "You can't use /inpaint in this server."


def _budget(value: float | None) -> str:
    return "no limit" if value is None else usd(value)


class GuildAdmin:
    """What admins decided for their guild, read from the job store on every check (no cache to go stale)."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock

    # what the core asks

    @staticmethod
    def refusal_in(guild_id: int | None, facts: MemberFacts) -> str | None:
        """Why a member may not start a job in ``guild_id`` now (banned, paused), from facts already read."""
        if guild_id is None:
            return None
        if facts.banned:
            return BANNED
        return PAUSED if facts.settings.paused else None

    async def refusal(self, guild_id: int | None, user_id: int) -> str | None:
        """Why a job of ``user_id`` may not start in ``guild_id`` now (paused, banned), or None."""
        return self.refusal_in(guild_id, await self.store.member_facts(guild_id, user_id))

    async def job_refusal(self, job: Job) -> str | None:
        return await self.refusal(job.origin.guild_id, job.origin.user_id)

    async def budgets(self, guild_id: int | None) -> tuple[float | None, float | None]:
        """(member daily, server monthly) USD budgets in force, held to the owner's ceilings; None: no limit."""
        return self.budgets_in(guild_id, await self.store.guild_settings(guild_id) if guild_id is not None else None)

    def budgets_in(self, guild_id: int | None, stored: GuildSettings | None) -> tuple[float | None, float | None]:
        """As ``budgets``, from a guild's admin state already read."""
        defaults = self.settings.budgets
        if guild_id is None or stored is None:
            return defaults.capped("user_daily", defaults.user_daily_usd), None
        return (
            defaults.capped("user_daily", stored.user_daily(defaults.user_daily_usd)),
            defaults.capped("guild_monthly", stored.guild_monthly(defaults.guild_monthly_usd)),
        )

    # admin commands

    async def usage_report(self, guild_id: int, *, days: int) -> str:
        since = self.clock() - timedelta(days=days)
        rows = await self.store.usage(guild_id=guild_id, since=since)
        if not rows:
            return f"No jobs in this server in the last {days} day(s)."
        total = sum(r.spent_usd for r in rows)
        lines = [f"**Usage, last {days} day(s)**: {usd(total)} in {sum(r.jobs for r in rows)} job(s)"]
        for row in rows[:25]:
            lines.append(f"<@{row.user_id}>: {usd(row.spent_usd)} · {row.jobs} job(s) · {row.images} image(s)")
        if len(rows) > 25:
            lines.append(f"…and {len(rows) - 25} more member(s).")
        return "\n".join(lines)

    async def set_budgets(
        self,
        guild_id: int,
        *,
        by: int,
        user_daily_usd: float | None,
        guild_monthly_usd: float | None,
        reset: bool,
    ) -> str:
        """None leaves a budget as it is; ``reset`` goes back to the config defaults for both. A budget above the
        owner's ceiling is refused and nothing changes."""
        ceilings = self.settings.budgets
        for label, value, ceiling in (
            ("member daily", user_daily_usd, ceilings.max_user_daily_usd),
            ("server monthly", guild_monthly_usd, ceilings.max_guild_monthly_usd),
        ):
            if value is not None and ceiling is not None and value > ceiling:
                return (
                    f"Nothing changed: the bot's owner allows a {label} budget of at most {usd(ceiling)} "
                    f"(you asked for {usd(value)})."
                )
        daily: float | BudgetChange = DEFAULT if reset else (UNCHANGED if user_daily_usd is None else user_daily_usd)
        monthly: float | BudgetChange = (
            DEFAULT if reset else (UNCHANGED if guild_monthly_usd is None else guild_monthly_usd)
        )
        if daily is UNCHANGED and monthly is UNCHANGED:
            return "Nothing changed: give member_daily, server_monthly or reset.\n" + await self._budget_lines(guild_id)
        await self.store.set_budgets(guild_id, user_daily_usd=daily, guild_monthly_usd=monthly, by=by)
        log.info("guild=%s admin=%s set budgets daily=%s monthly=%s", guild_id, by, daily, monthly)
        return "Budgets saved.\n" + await self._budget_lines(guild_id)

    async def set_paused(self, guild_id: int, paused: bool, *, by: int) -> str:
        await self.store.set_paused(guild_id, paused, by=by)
        log.info("guild=%s admin=%s %s", guild_id, by, "paused" if paused else "resumed")
        if paused:
            return "Paused: new /inpaint jobs are refused and waiting jobs stay in line until you resume."
        return "Resumed: /inpaint takes jobs again and the waiting line moves."

    async def ban(self, guild_id: int, user_id: int, *, by: int, reason: str | None) -> tuple[bool, str]:
        """(newly banned, the answer); the caller drops the member's waiting jobs when newly banned."""
        if await self.store.ban(guild_id, user_id, by=by, reason=reason):
            log.info("guild=%s admin=%s banned user=%s", guild_id, by, user_id)
            return True, f"<@{user_id}> can no longer use /inpaint here; their waiting jobs won't be sent to fal."
        return False, f"<@{user_id}> was already banned."

    async def unban(self, guild_id: int, user_id: int, *, by: int) -> str:
        if await self.store.unban(guild_id, user_id, by=by):
            log.info("guild=%s admin=%s unbanned user=%s", guild_id, by, user_id)
            return f"<@{user_id}> can use /inpaint here again."
        return f"<@{user_id}> wasn't banned."

    async def _budget_lines(self, guild_id: int) -> str:
        daily, monthly = await self.budgets(guild_id)
        return f"Member daily budget: {_budget(daily)}\nServer monthly budget: {_budget(monthly)}"

    async def limits_text(self, guild_id: int) -> str:
        s = self.settings
        stored = await self.store.guild_settings(guild_id)
        bans = await self.store.bans(guild_id)
        access = s.access
        nsfw_ok = "yes" if s.safety.allow_nsfw_in_age_restricted else "no"
        lines = [
            f"State: {'⏸️ paused' if stored.paused else '▶️ taking jobs'}",
            await self._budget_lines(guild_id),
            f"Exempt roles: {', '.join(f'<@&{r}>' for r in s.budgets.exempt_role_ids) or 'none'}",
            f"Unfinished jobs per member: {s.limits.max_jobs_per_user}",
            f"Jobs at fal at once (whole bot): {s.fal.max_concurrent}",
            f"Price estimate: {usd(s.fal.price_per_megapixel)} per megapixel",
            f"Images per job: up to {s.limits.max_num_images}; steps up to {s.limits.max_num_inference_steps}",
            f"Largest input: {s.limits.max_input_bytes // (1024 * 1024)} MB, "
            f"sent to fal at up to {s.limits.max_megapixels:g} MP",
            f"Channels: {', '.join(f'<#{c}>' for c in access.channel_ids) or 'any'}",
            f"Roles: {', '.join(f'<@&{r}>' for r in access.role_ids) or 'any'}",
            f"Safety checker off in age-restricted channels: {nsfw_ok}",
            f"Blocked prompt terms: {len(s.safety.blocked_terms)}",
            f"Banned members: {', '.join(f'<@{u}>' for u in bans) or 'none'}",
        ]
        log_entries = await self.store.admin_log(guild_id, limit=5)
        if log_entries:
            lines.append("Recent admin changes:")
            lines.extend(
                f"<t:{int(e.at.timestamp())}:R> <@{e.actor_id}> {e.action}{f': {e.detail}' if e.detail else ''}"
                for e in log_entries
            )
        return "\n".join(lines)[:2000]
