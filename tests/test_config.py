"""Settings from the TOML file and the environment; the developer's own settings never reach a test
(``isolated_settings`` in conftest.py clears them, and each test here sets what it means to test)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main
from bot.config import (
    CatalogSettings,
    ConfigError,
    FalSettings,
    LimitSettings,
    LoraEntry,
    StyleEntry,
    StyleLora,
    load_settings,
    masked_dump,
)
from tests.conftest import MakeRig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_need_only_the_two_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "discord-secret-token")
    monkeypatch.setenv("FAL_KEY", "fal-secret-key")
    settings = load_settings(tmp_path / "missing.toml")
    assert settings.fal.base_url == "https://queue.fal.run"
    assert settings.fal.app_id == "fal-ai/flux-lora"
    assert settings.storage.data_dir == Path("data")
    assert settings.fal.key.get_secret_value() == "fal-secret-key"


def test_env_wins_over_file_and_prefixed_wins_over_plain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[discord]\ntoken = "file-token"\n[fal]\nkey = "file-key"\nmax_concurrent = 3\n')
    monkeypatch.setenv("FAL_KEY", "plain-key")
    monkeypatch.setenv("FLUXPAINT_FAL__MAX_CONCURRENT", "5")
    settings = load_settings(path)
    assert settings.fal.key.get_secret_value() == "plain-key"
    assert settings.fal.max_concurrent == 5
    assert settings.discord.token.get_secret_value() == "file-token"
    monkeypatch.setenv("FLUXPAINT_FAL__KEY", "prefixed-key")
    assert load_settings(path).fal.key.get_secret_value() == "prefixed-key"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[fal]\nkey="k"\nbogus = 1\n', "fal.bogus: unknown key"),
        ('[fal]\nkey="k"\nbase_url = "http://example.com"\n', "fal.base_url: must use https://"),
        ('[fal]\nkey="k"\nmax_concurrent = 0\n', "fal.max_concurrent: Input should be greater than or equal to 1"),
        ('[fal]\nkey="k"\nauth_scheme = "Basic"\n', "fal.auth_scheme:"),
        ('[fal]\nkey="k"\nmedia_hosts = ["a/b"]\n', "fal.media_hosts.0:"),
        ('[fal]\nkey="k"\n[limits]\nmax_megapixels = -1\n', "limits.max_megapixels:"),
        ('[fal]\nkey="k"\n[ui]\ntoken_ttl_s = inf\n', "ui.token_ttl_s:"),
        ('[fal]\nkey="k"\n[ui]\ntoken_ttl_s = 30\n', "ui: ui.token_margin_s must be less than"),
        ('[fal]\nkey="k"\n[storage]\nprune_interval_s = 0.001\n', "storage.prune_interval_s:"),
    ],
    ids=[
        "unknown-key",
        "plain-http",
        "zero-concurrency",
        "bad-scheme",
        "bad-host",
        "negative-mp",
        "infinite-ttl",
        "ttl-within-margin",
        "prune-too-often",
    ],
)
def test_bad_keys_are_named_one_per_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, expected: str
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "t")
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, toml))
    assert any(line.startswith(expected) for line in info.value.lines), info.value.lines


def test_loopback_http_is_accepted_for_fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "t")
    path = write(tmp_path, '[fal]\nkey="k"\nbase_url = "http://127.0.0.1:8080/"\nmedia_hosts = ["127.0.0.1:9000"]\n')
    settings = load_settings(path)
    assert settings.fal.base_url == "http://127.0.0.1:8080"
    assert settings.fal.media_hosts == ["127.0.0.1:9000"]


def test_fluxpaint_config_names_the_file_when_no_path_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named = write(tmp_path, '[discord]\ntoken = "t"\n[fal]\nkey = "k"\nmax_concurrent = 3\n')
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('[discord]\ntoken = "t"\n[fal]\nkey = "k"\nmax_concurrent = 4\n')
    monkeypatch.setenv("FLUXPAINT_CONFIG", str(named))
    assert load_settings().fal.max_concurrent == 3
    assert load_settings(explicit).fal.max_concurrent == 4  # --config wins over FLUXPAINT_CONFIG


async def test_a_rigs_settings_come_from_the_rig_alone(make_rig: MakeRig) -> None:
    """Run by the next test inside a hostile working directory and environment; passes trivially on its own."""
    rig = await make_rig(start=False)
    assert rig.settings.fal.max_concurrent == FalSettings.model_fields["max_concurrent"].default
    assert rig.settings.limits == LimitSettings()
    with pytest.raises(ConfigError) as info:
        load_settings()  # FLUXPAINT_CONFIG and the plain secrets are the developer's no more
    text = "\n".join(info.value.lines)
    assert "DISCORD_TOKEN" in text and "FAL_KEY" in text, text


@pytest.mark.parametrize(
    ("config_toml", "env"),
    [
        pytest.param("[limits]\nmax_megapixels = -1\n", {}, id="bad-config-toml-in-cwd"),
        pytest.param(
            None,
            {"FLUXPAINT_FAL__MAX_CONCURRENT": "999", "DISCORD_TOKEN": "developer-token", "FAL_KEY": "developer-key"},
            id="developer-env",
        ),
        pytest.param(
            "[limits]\nmax_megapixels = -1\n",
            {"FLUXPAINT_FAL__MAX_CONCURRENT": "999", "FLUXPAINT_CONFIG": "config.toml", "FAL_KEY": "developer-key"},
            id="both",
        ),
    ],
)
def test_the_developers_config_and_env_do_not_reach_a_rig(
    tmp_path: Path, config_toml: str | None, env: dict[str, str]
) -> None:
    """A real pytest session started where a developer works: their config.toml and variables must not count."""
    if config_toml is not None:
        (tmp_path / "config.toml").write_text(config_toml)
    inner = f"{Path(__file__).resolve()}::test_a_rigs_settings_come_from_the_rig_alone"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", inner],
        cwd=tmp_path,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout, done.stdout[-3000:]


def test_missing_secrets_say_how_to_set_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "none.toml")
    text = "\n".join(info.value.lines)
    assert "DISCORD_TOKEN" in text and "FAL_KEY" in text


def test_terminal_inpaint_needs_only_the_fal_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", "k")
    assert load_settings(tmp_path / "none.toml", require_discord=False).fal.key.get_secret_value() == "k"
    with pytest.raises(ConfigError):
        load_settings(tmp_path / "none.toml")


def test_check_config_masks_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "discord-secret-token")
    monkeypatch.setenv("FAL_KEY", "fal-secret-key")
    assert main(["--config", str(tmp_path / "none.toml"), "check-config"]) == 0
    out = capsys.readouterr().out
    assert "fal-secret-key" not in out and "discord-secret-token" not in out
    assert '"key": "**********"' in out and "queue.fal.run" in out


def test_check_config_reports_every_bad_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "t")
    path = write(tmp_path, '[fal]\nkey="k"\ntypo = 1\n[ui]\ntoken_ttl_s = -2\n')
    assert main(["--config", str(path), "check-config"]) == 2
    err = capsys.readouterr().err
    assert "fal.typo: unknown key" in err and "ui.token_ttl_s" in err


def test_example_config_is_complete_and_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "t")
    monkeypatch.setenv("FAL_KEY", "k")
    example = Path(__file__).resolve().parents[1] / "config.example.toml"
    settings = load_settings(example)
    text = example.read_text()
    for section, values in masked_dump(settings).items():
        assert f"[{section}]" in text
        for key in values:
            assert f"{key} =" in text or f"# {key} =" in text, f"{section}.{key} is not documented"
    for model in (
        LoraEntry,
        StyleEntry,
    ):  # [[loras]] and [[styles]] are lists, empty by default: their commented example
        for key in model.model_fields:
            assert f"# {key} =" in text, f"{model.__name__}.{key} is not in the commented example"
    assert all(f"{key} =" in text for key in StyleLora.model_fields)


def _uncommented(text: str, header: str) -> str:
    lines = text[text.index(f"# {header}") :].splitlines()
    block = [line.removeprefix("# ") for line in lines[: lines.index("") if "" in lines else len(lines)]]
    return "\n".join(block) + "\n"


def test_example_loras_and_styles_work_when_uncommented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "t")
    monkeypatch.setenv("FAL_KEY", "k")
    text = (Path(__file__).resolve().parents[1] / "config.example.toml").read_text()
    settings = load_settings(write(tmp_path, text + _uncommented(text, "[[loras]]") + _uncommented(text, "[[styles]]")))
    assert [lora.name for lora in settings.loras] == ["pixel-art"]
    assert settings.loras[0].path.startswith("https://huggingface.co/")
    assert [(style.name, [(used.name, used.scale) for used in style.loras]) for style in settings.styles] == [
        ("retro-game", [("pixel-art", 0.8)])
    ]


LORA = '[[loras]]\nname = "{name}"\npath = "{path}"\n'
HF = "https://huggingface.co/u/r/resolve/main/x.safetensors"


def _lora(name: str = "pixel-art", path: str = HF, extra: str = "") -> str:
    return LORA.format(name=name, path=path) + extra


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (_lora(name="pixel art"), "loras.0.name: 'pixel art' is not a name: use 1 to 32 characters of a-z, 0-9"),
        (_lora(name="x" * 33), "loras.0.name: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' is not a name"),
        (_lora(name=""), "loras.0.name: '' is not a name"),
        (_lora() + _lora(name="Pixel-Art"), "loras.1.name: 'pixel-art' names two [[loras]] entries"),
        (_lora(path="http://huggingface.co/x.safetensors"), "loras.0.path: the link must start with https://"),
        (_lora(path="huggingface.co/u/r/x.safetensors"), "loras.0.path: the link must start with https://"),
        (_lora(path="https://huggingface.co:8443/x"), "loras.0.path: the link may not name a port or a user"),
        (_lora(path="https://evil.example/x.safetensors"), "loras.0.path: the host evil.example is not on catalog"),
        (_lora(path="https://huggingface.co.evil.example/x"), "loras.0.path: the host huggingface.co.evil.example"),
        (_lora(path="https://evilhuggingface.co/x"), "loras.0.path: the host evilhuggingface.co is not on catalog"),
        (_lora(extra="scale = 4.5\n"), "loras.0.scale: Input should be less than or equal to 4"),
        (_lora(extra='trigger_words = [""]\n'), "loras.0.trigger_words.0: String should have at least 1 character"),
        (_lora(extra=f"description = '{'d' * 101}'\n"), "loras.0.description: String should have at most 100"),
        ('[catalog]\nallowed_hosts = ["https://hf.co"]\n', "catalog.allowed_hosts.0: 'https://hf.co' is not a host"),
        (_lora() + '[[styles]]\nname = "s"\nprompt = "no placeholder"\n', "styles.0.prompt: must hold {prompt}"),
        (_lora() + '[[styles]]\nname = "s"\nprompt = "{prompt} {prompt}"\n', "styles.0.prompt: must hold {prompt}"),
        (_lora() + '[[styles]]\nname = "s"\nprompt = "{prompt}, {seed}"\n', "styles.0.prompt: must hold {prompt}"),
        (_lora() + '[[styles]]\nname = "s"\nloras = ["pixel-art", "nope"]\n', "styles.0.loras.1: 'nope' is not"),
        (
            _lora() + '[[styles]]\nname = "s"\nloras = ["pixel-art", "Pixel-Art"]\n',
            "styles.0.loras: pixel-art appears more than once",
        ),
        (
            _lora() + _lora(name="same-file") + '[[styles]]\nname = "s"\nloras = ["pixel-art", "same-file"]\n',
            "styles.0.loras.1: 'same-file' has the same path as 'pixel-art'",
        ),
        (
            '[[styles]]\nname = "s"\n[[styles]]\nname = "S"\n',
            "styles.1.name: 's' names two [[styles]] entries",
        ),
        (
            "".join(_lora(name=f"l{i}", path=f"{HF}?{i}") for i in range(3))
            + '[limits]\nmax_loras = 2\n[[styles]]\nname = "s"\nloras = ["l0", "l1", "l2"]\n',
            "styles.0.loras: 3 LoRAs, more than limits.max_loras (2)",
        ),
        ("[limits]\nmax_loras = 11\n", "limits.max_loras: Input should be less than or equal to 10"),
        (_lora() + '[[styles]]\nname = "s"\nstrength = 0\n', "styles.0.strength: Input should be greater"),
    ],
    ids=[
        "name-with-space",
        "name-too-long",
        "name-empty",
        "duplicate-lora-any-case",
        "lora-plain-http",
        "lora-no-scheme",
        "lora-port",
        "lora-host-not-allowed",
        "lora-host-lookalike",
        "lora-host-same-ending",
        "lora-scale-over-4",
        "empty-trigger-word",
        "long-description",
        "allowed-host-with-scheme",
        "template-without-prompt",
        "template-prompt-twice",
        "template-other-field",
        "style-unknown-lora",
        "style-lora-twice",
        "style-same-path-twice",
        "duplicate-style",
        "style-over-max-loras",
        "max-loras-over-10",
        "style-strength-out-of-range",
    ],
)
def test_bad_loras_and_styles_are_named_one_per_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, expected: str
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "t")
    monkeypatch.setenv("FAL_KEY", "k")
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, toml))
    assert any(line.startswith(expected) for line in info.value.lines), info.value.lines


def test_catalog_problems_are_reported_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "t")
    monkeypatch.setenv("FAL_KEY", "k")
    toml = _lora() + _lora(path="https://evil.example/x") + '[[styles]]\nname = "s"\nloras = ["nope"]\n'
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, toml))
    assert [line.split(":")[0] for line in info.value.lines] == ["loras.1.name", "loras.1.path", "styles.0.loras.0"]


def test_good_loras_and_styles_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "t")
    monkeypatch.setenv("FAL_KEY", "k")
    toml = (
        '[catalog]\nallowed_hosts = ["HuggingFace.co", "example.org"]\nallow_urls = true\n'
        + _lora(
            name="Pixel-Art", path="https://cdn-lfs.huggingface.co/x.safetensors", extra="trigger_words = [' px ']\n"
        )
        + _lora(name="other", path="https://example.org/o.safetensors")
        + '[[styles]]\nname = "Retro"\nprompt = "{prompt}, retro"\nloras = ["pixel-art", {name = "other", scale = 2}]\n'
    )
    settings = load_settings(write(tmp_path, toml))
    assert settings.catalog.allowed_hosts == ["huggingface.co", "example.org"] and settings.catalog.allow_urls
    assert [lora.name for lora in settings.loras] == ["pixel-art", "other"]  # names are lower-cased, not refused
    assert settings.loras[0].trigger_words == ["px"] and settings.loras[0].scale == 1.0
    assert settings.styles[0].name == "retro"
    assert [(used.name, used.scale) for used in settings.styles[0].loras] == [("pixel-art", None), ("other", 2.0)]
    assert settings.limits.max_loras == 4


def test_catalog_defaults() -> None:
    assert CatalogSettings().allowed_hosts == [
        "huggingface.co",
        "civitai.com",
        "fal.media",
        "v3.fal.media",
        "storage.googleapis.com",
    ]
    assert CatalogSettings().allow_urls is False


def test_one_shard_per_process() -> None:
    from bot.config import DiscordSettings

    assert DiscordSettings(token="t", shard_ids=[1], shard_count=2).shard_ids == [1]
    for bad, needle in (
        ({"shard_ids": [0]}, "needs discord.shard_count"),
        ({"shard_ids": [2], "shard_count": 2}, "between 0 and shard_count - 1"),
        ({"shard_ids": [0, 1], "shard_count": 2}, "one shard per process"),
    ):
        with pytest.raises(ValueError, match=needle):
            DiscordSettings(token="t", **bad)


async def test_the_bot_connects_as_its_shard(tmp_path: Path) -> None:
    import aiohttp

    from bot.app import FluxpaintBot
    from bot.config import Settings

    settings = Settings(
        discord={"token": "t", "shard_ids": [1], "shard_count": 3},
        fal={"key": "k"},
        storage={"data_dir": str(tmp_path)},
    )
    bot = FluxpaintBot(settings, http_trace=aiohttp.TraceConfig())
    assert (bot.shard_id, bot.shard_count) == (1, 3)  # what discord.py sends in IDENTIFY's "shard"
    await bot.close()
