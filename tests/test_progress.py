from datetime import UTC, datetime, timedelta

import pytest

from bot.delivery import batches
from bot.models import InpaintOptions, Job, JobState, Origin
from bot.progress import ResultFile, eta_text, place, progress_reply, refresh_s, result_reply


def make_job(**changes: object) -> Job:
    origin = Origin(
        user_id=7,
        guild_id=1,
        channel_id=2,
        application_id=3,
        interaction_id=4,
        interaction_token="secret-token",
        token_expires_at=datetime.now(UTC) + timedelta(minutes=15),
    )  # type: ignore[arg-type]
    job = Job(
        origin=origin,
        options=InpaintOptions(prompt="a red hat", num_images=2, seed=5),
        width=600,
        height=400,
        cost_estimate_usd=0.0168,
    )
    for key, value in changes.items():
        setattr(job, key, value)
    return job


@pytest.mark.parametrize(
    ("changes", "position", "expected", "cancel"),
    [
        ({"state": JobState.WAITING}, 3, "#3 in this bot's queue", True),
        ({"state": JobState.QUEUED, "queue_position": 4}, None, "Queued at fal: position 4", True),
        ({"state": JobState.QUEUED, "queue_position": 0}, None, "position 0 (next up)", True),
        ({"state": JobState.RUNNING}, None, "Generating", True),
        ({"state": JobState.FAILED, "error": "The mask selects nothing."}, None, "❌ The mask selects nothing.", False),
        ({"state": JobState.CANCELLED}, None, "Cancelled", False),
    ],
    ids=["waiting", "queued", "next-up", "running", "failed", "cancelled"],
)
def test_progress_text(changes: dict[str, object], position: int | None, expected: str, cancel: bool) -> None:
    reply = progress_reply(make_job(**changes), line_position=position)
    assert expected in reply.content
    assert "a red hat" in reply.content and "2 images" in reply.content and "600×400" in reply.content
    assert reply.cancel_button is cancel


def test_huge_prompt_stays_within_discord_limits() -> None:
    job = make_job(options=InpaintOptions(prompt="x" * 2000))
    assert len(progress_reply(job).content) <= 2000
    embed = result_reply(job, elapsed_s=3, withheld=0).embed
    assert embed is not None and len(embed.description) <= 4096


def test_result_embed_lists_everything_needed_to_reproduce() -> None:
    job = make_job(state=JobState.DONE, seed=5, cost_usd=0.0168)
    reply = result_reply(job, elapsed_s=41.6, withheld=1)
    assert reply.embed is not None
    fields = dict(reply.embed.fields)
    assert fields == {
        "Seed": "5",
        "Strength": "0.85",
        "Steps": "28",
        "Guidance": "3.5",
        "Size": "600×400",
        "Time": "42 s",
        "Est. cost": "$0.017",
    }
    assert "withheld" in reply.embed.description
    assert "secret-token" not in repr(job)


def test_batches_respect_ten_files_and_request_size() -> None:
    files = [ResultFile(f"{i}.png", b"x" * 10) for i in range(12)]
    assert [len(b) for b in batches(files)] == [10, 2]
    big = [ResultFile(f"{i}.png", b"x" * 9) for i in range(3)]
    assert [len(b) for b in batches(big, max_bytes=20)] == [2, 1]


@pytest.mark.parametrize(
    ("position", "text"),
    [
        (0, "position 0 (next up)"),
        (7, "position 7"),
        (10, "position 10"),
        (11, "about 10th in line"),
        (22, "about 20th in line"),
        (23, "about 25th in line"),
        (113, "about 110th in line"),
        (483, "about 480th in line"),
        (1251, "about 1300th in line"),
    ],
)
def test_positions_are_exact_near_the_front_and_rounder_further_back(position: int, text: str) -> None:
    assert place(position) == text


def test_positions_far_back_may_wait_longer_for_an_edit() -> None:
    assert refresh_s(None) == refresh_s(3) == refresh_s(10) == 0.0
    assert 0 < refresh_s(40) < refresh_s(480) <= refresh_s(100_000) == 300.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, ""),
        (-1.0, ""),
        (42.0, "under a minute"),
        (6 * 60 + 10, "about 6 min"),
        (23 * 60, "about 25 min"),
        (100 * 60, "about 1.5 h"),
        (7 * 3600, ""),  # past six hours an estimate says nothing worth reading
    ],
)
def test_estimates_are_rounded_words_or_nothing(seconds: float | None, text: str) -> None:
    assert eta_text(seconds) == text


def test_a_reply_says_its_step_so_a_new_one_goes_first() -> None:
    queued = progress_reply(make_job(state=JobState.QUEUED, queue_position=483), eta_s=6 * 60)
    assert "Queued at fal: about 480th in line · about 6 min" in queued.content
    assert queued.stage == "queued" and queued.refresh_s > 0
    running = progress_reply(make_job(state=JobState.RUNNING))
    assert running.stage == "running" and running.refresh_s == 0
    held = progress_reply(make_job(state=JobState.WAITING), held="The bot is paused here.")
    assert held.stage == "waiting:held"
    # what is compared is what a member sees: the step and the refresh time are not part of it
    assert progress_reply(make_job(state=JobState.QUEUED, queue_position=483)) == progress_reply(
        make_job(state=JobState.QUEUED, queue_position=481)
    )
