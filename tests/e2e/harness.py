"""The real bot as a subprocess (``python -m bot``, unmodified) against the fakes served by the test process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fakes.discord import FakeDiscord
from tests.fakes.fal import FakeFal
from tests.rig import host_of

REPO = Path(__file__).resolve().parents[2]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


# What the scenarios change from the defaults: short polls, so a job's progress shows within a test's patience.
SCENARIO_DEFAULTS: dict[str, dict[str, Any]] = {
    "fal": {"status_mode": "poll", "poll_interval_s": 0.1, "max_poll_interval_s": 0.5},
    "logging": {"level": "INFO"},
}


def config_for(
    workdir: Path,
    discord: FakeDiscord,
    fal: FakeFal,
    extra: dict[str, dict[str, Any]] | None = None,
    *,
    defaults: dict[str, dict[str, Any]] = SCENARIO_DEFAULTS,
) -> Path:
    """A config.toml for a bot that talks only to the two fakes: ``defaults``, then ``extra``, over the bot's
    own defaults; the secrets come from the environment."""
    assert fal.base_url is not None
    sections: dict[str, dict[str, Any]] = {
        "discord": {
            "api_base_url": discord._base(),
            "gateway_url": discord.gateway_url,
            "attachment_hosts": [host_of(discord._base())],
        },
        "fal": {"base_url": fal.base_url, "media_hosts": [fal.media_host]},
        "storage": {"data_dir": str(workdir / "data")},
    }
    for section, values in [*defaults.items(), *(extra or {}).items()]:
        sections.setdefault(section, {}).update(values)
    return write_config(workdir / "config.toml", sections)


async def poll_until(condition: Callable[[], bool], what: str, timeout: float, every: float = 0.05) -> None:  # noqa: ASYNC109
    """Poll ``condition``: the bot is another process, so nothing in this one signals its progress."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s")
        await asyncio.sleep(every)


class BotProcess:
    """One ``python -m bot`` process (or ``module``: the benchmarks' minimal bot); ``start`` again after ``kill`` or
    ``terminate`` to restart it."""

    def __init__(self, workdir: Path, discord: FakeDiscord, fal: FakeFal, config: Path, *, module: str = "bot") -> None:
        self.module = module
        self.workdir = workdir
        self.discord = discord
        self.fal = fal
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.log = workdir / "bot.log"
        self.starts = 0

    async def start(self, timeout: float = 30) -> None:  # noqa: ASYNC109
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXPAINT_")}
        env |= {"DISCORD_TOKEN": self.discord.bot_token, "FAL_KEY": self.fal.key, "PYTHONUNBUFFERED": "1"}
        sessions = len(self.discord.sessions)
        with self.log.open("a") as log:
            log.write(f"---- start {self.starts + 1} ({self.module})\n")
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                "--config",
                str(self.config),
                cwd=self.workdir,
                env=env | {"PYTHONPATH": str(REPO)},
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        self.starts += 1
        await self.discord.wait_for(
            lambda: any(s.ready and not s.ws.closed for s in self.discord.sessions[sessions:]) or self._exited(),
            timeout,
        )
        if self._exited():
            raise RuntimeError(f"{self.module} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    async def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as in a power cut or the OOM killer."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    async def terminate(self, timeout: float = 10, sig: int = signal.SIGTERM) -> int:  # noqa: ASYNC109
        """SIGTERM as ``docker stop`` sends (or SIGINT, Ctrl-C); the exit code (Docker's stop timeout is 10 s)."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""
