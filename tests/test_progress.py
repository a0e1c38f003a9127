from datetime import UTC, datetime, timedelta

import pytest

from bot.delivery import batches
from bot.models import InpaintOptions, Job, JobState, Origin
from bot.progress import ResultFile, progress_reply, result_reply


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
