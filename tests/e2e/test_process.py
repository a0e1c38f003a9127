"""Scenarios against the real bot process: what members see and which calls were made."""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
import sqlite3
from typing import Any

import pytest
from PIL import Image

from bot.models import Job, JobState
from tests.e2e.conftest import MakeE2E
from tests.e2e.harness import poll_until
from tests.fakes.discord import ManualClock
from tests.rig import fixture, visible_text

pytestmark = pytest.mark.e2e

COFFEE, COFFEE_MASK = fixture("coffee.png"), fixture("coffee_mask.png")


async def inpaint(  # type: ignore[no-untyped-def]
    e2e,
    user: str = "alice",
    channel: str = "general",
    image: tuple[str, bytes] = ("photo.png", COFFEE),
    mask: tuple[str, bytes] | None = ("mask.png", COFFEE_MASK),
    **options,
):
    attachments = {"image": (*image, None)} | ({"mask": (*mask, None)} if mask is not None else {})
    return await e2e.discord.slash(
        "inpaint",
        user=user,
        channel=channel,
        options={"prompt": "a red hat", **options},
        attachments=attachments,
    )


async def wait_text(e2e, interaction, needle: str, timeout: float = 20):  # type: ignore[no-untyped-def]  # noqa: ASYNC109
    def shown() -> bool:
        msg = interaction.original()
        return msg is not None and needle in visible_text(msg)

    try:
        await e2e.discord.wait_for(shown, timeout)
    except TimeoutError as exc:
        raise AssertionError(f"{needle!r} not shown; bot log:\n{e2e.bot.log_text()[-4000:]}") from exc
    return interaction.original()


async def eventually(e2e, condition, what: str, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]  # noqa: ASYNC109
    """Wait for a condition on the fake fal or the bot's log, which no Discord event signals."""
    try:
        await poll_until(condition, what, timeout)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; bot log:\n{e2e.bot.log_text()[-4000:]}") from None


def logged(e2e, needle: str, start: int):  # type: ignore[no-untyped-def]
    """Whether the ``start``-th run of the bot logged ``needle``."""
    return lambda: needle in e2e.bot.log_text().split(f"---- start {start}\n")[-1]


def stored_jobs(e2e) -> list[Job]:  # type: ignore[no-untyped-def]
    """The job store's rows as the bot left them on disk (read while the bot is down)."""
    with contextlib.closing(sqlite3.connect(e2e.bot.workdir / "data" / "fluxpaint.sqlite3")) as db:
        return [Job.model_validate_json(data) for (data,) in db.execute("SELECT data FROM jobs ORDER BY created_at")]


def result_messages(e2e):  # type: ignore[no-untyped-def]
    return [m for m in e2e.discord.messages_in("general") if m.attachments]


async def test_happy_path_against_the_real_process(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(fake_fal={"positions": [2, 1, 0]})
    interaction = await inpaint(e2e, num_images=2, output_format="png")
    final = await wait_text(e2e, interaction, "Inpainted")
    # within Discord's 3 s: the fake answers a late callback 404 10062, as Discord does (timings are in bench/)
    assert interaction.callbacks[0].type == 5 and interaction.callbacks[0].status == 200
    paths = [r.path for r in e2e.discord.requests]
    first_download = next(i for i, p in enumerate(paths) if p.startswith("/cdn/attachments/"))
    assert any(p.endswith("/callback") for p in paths[:first_download])  # deferred before any slow work
    assert len(final.attachments) == 2
    for attachment in final.attachments:
        image = Image.open(io.BytesIO(attachment.data))
        assert (image.format, image.size) == ("PNG", (600, 400))
    assert len(e2e.fal.submits) == 1 and e2e.discord.rate_limited == [] and e2e.discord.unknown_routes == []
    assert e2e.discord.bot_token not in e2e.bot.log_text() and e2e.fal.key not in e2e.bot.log_text()
    assert interaction.token not in e2e.bot.log_text()


async def test_kill_9_while_queued_then_restart_delivers_once(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(fake_fal={"hold": True})
    interaction = await inpaint(e2e)
    await wait_text(e2e, interaction, "Queued at fal")
    await e2e.bot.kill()
    e2e.fal.release()
    await e2e.bot.start()
    final = await wait_text(e2e, interaction, "Inpainted")
    assert len(final.attachments) == 1 and len(result_messages(e2e)) == 1
    assert len(e2e.fal.submits) == 1


async def preview_uploaded(e2e, interaction) -> None:  # type: ignore[no-untyped-def]
    """Wait (fal holding the job) until the reply shows the mask preview: every upload after it is the result's."""
    await wait_text(e2e, interaction, "Queued at fal")

    def shown() -> bool:
        reply = interaction.original()
        return reply is not None and [a.filename for a in reply.attachments] == ["mask-preview.jpg"]

    await e2e.discord.wait_for(shown, 20)


async def test_kill_9_after_discord_took_the_upload_posts_it_once(make_e2e: MakeE2E) -> None:
    gate = asyncio.Event()
    e2e = await make_e2e(fake_discord={"upload_gate": gate, "upload_gate_after": 10**6}, fake_fal={"hold": True})
    interaction = await inpaint(e2e, num_images=2)
    await preview_uploaded(e2e, interaction)
    e2e.discord.upload_gate_after = e2e.discord.uploads_seen  # from here on: the result's upload
    e2e.fal.release()
    await e2e.discord.wait_for(lambda: e2e.discord.uploads_waiting > 0, 20)
    await e2e.bot.kill()  # Discord has the images; the bot never heard back
    gate.set()
    await e2e.bot.start()
    final = await wait_text(e2e, interaction, "Inpainted")
    await eventually(e2e, logged(e2e, "delivered", start=2), "delivery by the second run")
    assert len(final.attachments) == 2 and len(result_messages(e2e)) == 1
    assert len(e2e.fal.submits) == 1


async def test_kill_9_during_submit_never_resubmits(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(fake_fal={"hang_submit": True})
    interaction = await inpaint(e2e)
    await eventually(e2e, lambda: len(e2e.fal.submits) == 1, "the submit")
    await e2e.bot.kill()
    e2e.fal.hang_submit = False
    await e2e.bot.start()
    reply = await wait_text(e2e, interaction, "may still run")
    assert "It was not sent again" in reply.content
    assert len(e2e.fal.submits) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_sigterm_mid_job_exits_cleanly_and_the_job_completes_after_restart(make_e2e: MakeE2E, sig: int) -> None:
    e2e = await make_e2e(fake_fal={"hold": True})
    interaction = await inpaint(e2e)
    await wait_text(e2e, interaction, "Queued at fal")
    assert await e2e.bot.terminate(timeout=10, sig=sig) == 0
    assert "stopped; unfinished jobs resume at the next start" in e2e.bot.log_text()
    e2e.fal.release()
    await e2e.bot.start()
    final = await wait_text(e2e, interaction, "Inpainted")
    assert len(final.attachments) == 1 and len(e2e.fal.submits) == 1


async def test_cancel_from_a_fresh_process(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(fake_fal={"hold": True})
    interaction = await inpaint(e2e)
    reply = await wait_text(e2e, interaction, "Queued at fal")
    await e2e.bot.kill()
    await e2e.bot.start()
    (button,) = [c for c in reply.custom_ids() if c.startswith("fp:cancel:")]
    refused = await e2e.discord.click(reply.id, button, user="bob")
    await e2e.discord.wait_for(lambda: refused.original() is not None and not refused.original().loading, 20)
    assert "Only the member who started" in refused.original().content and e2e.fal.cancels == []
    click = await e2e.discord.click(reply.id, button, user="alice")
    await e2e.discord.wait_for(lambda: click.original() is not None and not click.original().loading, 20)
    await wait_text(e2e, interaction, "Cancelled")
    assert len(e2e.fal.cancels) == 1 and len(e2e.fal.submits) == 1


async def test_default_pacing_causes_no_429(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(
        fake_discord={"ratelimit_headers": False},  # every edit past Discord's limit would be a 429
        fake_fal={"positions": [6, 5, 4, 3, 2, 1, 0], "in_progress_steps": 4},
    )
    interaction = await inpaint(e2e)
    final = await wait_text(e2e, interaction, "Inpainted", timeout=60)
    # Without rate-limit headers the fake answers every edit past Discord's limit with a 429: none came. The
    # gaps themselves are a benchmark figure (bench/edits), not a wall-clock assertion here.
    assert e2e.discord.rate_limited == []
    assert len(e2e.discord.edits_of(final.id)) >= 2  # it did show progress before the result


async def test_a_result_over_the_upload_limit_is_re_encoded_not_dropped(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(fake_discord={"upload_limit_bytes": 300_000}, fake_fal={"result_noise": True})
    # all of it repainted, so the noise is delivered whole: pasted into a mask's area only, it would be far smaller
    interaction = await inpaint(e2e, mask=None, region="everything", output_format="png")
    final = await wait_text(e2e, interaction, "Inpainted")
    (attachment,) = final.attachments
    assert attachment.size <= 300_000
    assert Image.open(io.BytesIO(attachment.data)).size == (600, 400)
    assert "upload limit" in visible_text(final)


async def test_fifty_members_at_once(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(fake_fal={"positions": [1, 0]})
    members = [f"member{n}" for n in range(50)]
    for name in members:
        e2e.discord.add_member(name)
    interactions = await asyncio.gather(*(inpaint(e2e, user=name) for name in members))
    await e2e.discord.wait_for(lambda: all(i.callbacks for i in interactions), 20)
    # each in time: the fake refuses a callback after Discord's 3 s (bench/first_response measures the times)
    assert all(i.callbacks and i.callbacks[0].type == 5 and i.callbacks[0].status == 200 for i in interactions)
    for interaction in interactions:
        await wait_text(e2e, interaction, "Inpainted", timeout=120)
    assert len(e2e.fal.submits) == 50 and len(result_messages(e2e)) == 50
    assert e2e.discord.rate_limited == []


def bomb_png() -> bytes:
    """400 megapixels of one colour: a few hundred kilobytes on the wire, 400 MB once decoded."""
    out = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(out, format="PNG")
    return out.getvalue()


def text_named_png() -> bytes:
    return b"hello, I am a text file\n" * 40


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param({"image": ("photo.png", text_named_png())}, "isn't a picture", id="text-as-image"),
        pytest.param({"image": ("photo.png", COFFEE[: len(COFFEE) // 2])}, "damaged or incomplete", id="truncated"),
        pytest.param({"mask": ("mask.png", b"")}, "The mask file is empty", id="empty-mask"),
        pytest.param({"image": ("bomb.png", bomb_png())}, "the limit is 50 MP", id="decompression-bomb"),
        pytest.param({"prompt": "   "}, "The prompt is empty", id="blank-prompt"),
    ],
)
async def test_bad_input_is_refused_with_a_reason_and_nothing_reaches_fal(
    make_e2e: MakeE2E, change: dict[str, Any], expected: str
) -> None:
    e2e = await make_e2e()
    interaction = await inpaint(e2e, **change)
    reply = await wait_text(e2e, interaction, "❌")
    assert expected in reply.content, reply.content
    assert "Traceback" not in reply.content and reply.attachments == []
    assert e2e.fal.requests == []


async def test_after_the_token_expires_the_member_is_mentioned_in_the_channel(make_e2e: MakeE2E) -> None:
    clock = ManualClock()
    e2e = await make_e2e(fake_discord={"clock": clock}, fake_fal={"hold": True})
    interaction = await inpaint(e2e)
    reply = await wait_text(e2e, interaction, "Queued at fal")
    clock.advance(16 * 60)  # the interaction token is dead: 401/50027 from now on
    e2e.fal.release()
    pointer = await wait_text(e2e, interaction, "Done: results in")
    (posted,) = [m for m in result_messages(e2e) if m.id != reply.id]
    assert posted.content.startswith(f"<@{e2e.discord.user_id('alice')}>") and len(posted.attachments) == 1
    assert str(posted.id) in pointer.content and len(e2e.fal.submits) == 1


async def test_fal_faults_are_ridden_out_without_a_second_submit(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(fake_fal={"status_5xx_rate": 0.3, "drop_status_count": 2, "positions": [3, 2, 1, 0]})
    interaction = await inpaint(e2e)
    final = await wait_text(e2e, interaction, "Inpainted", timeout=60)
    assert len(final.attachments) == 1 and len(e2e.fal.submits) == 1
    assert "❌" not in visible_text(final)


async def test_a_failed_fal_job_is_explained_and_not_retried(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(fake_fal={"fail_with": "Out of capacity"})
    interaction = await inpaint(e2e)
    reply = await wait_text(e2e, interaction, "❌")
    assert reply.attachments == [] and len(e2e.fal.submits) == 1
    assert "Out of capacity" in visible_text(reply) and "Traceback" not in reply.content


async def test_a_stricter_edit_limit_costs_one_429_and_the_result_still_arrives_once(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(
        # stricter than Discord's usual 5 per 5 s, and no headers on success to say so: only the 429 tells
        fake_discord={"ratelimit_headers": False, "edit_rate": (1, 3.0)},
        fake_fal={"positions": [5, 4, 3, 2, 1, 0], "in_progress_steps": 3},
    )
    interaction = await inpaint(e2e)
    final = await wait_text(e2e, interaction, "Inpainted", timeout=60)
    assert len(e2e.discord.rate_limited) == 1, "the bot learns the limit from the first 429's headers"
    assert len(final.attachments) == 1 and len(result_messages(e2e)) == 1 and len(e2e.fal.submits) == 1


# kill -9 at each state of a job in turn (the others are above: during the submit, while queued, after the upload)


async def test_kill_9_while_waiting_in_the_line_submits_each_job_once(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(fake_fal={"hold": True}, fal={"max_concurrent": 1})
    first = await inpaint(e2e, user="alice")
    await wait_text(e2e, first, "Queued at fal")
    second = await inpaint(e2e, user="bob")
    await wait_text(e2e, second, "in this bot's queue")
    await e2e.bot.kill()
    await e2e.bot.start()
    e2e.fal.release()
    for interaction in (first, second):
        final = await wait_text(e2e, interaction, "Inpainted")
        assert len(final.attachments) == 1
    assert len(e2e.fal.submits) == 2 and len(result_messages(e2e)) == 2


async def test_kill_9_while_running_watches_again_and_delivers_once(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(fake_fal={"hold": True})
    interaction = await inpaint(e2e)
    await wait_text(e2e, interaction, "Queued at fal")
    (request_id,) = e2e.fal.jobs
    e2e.fal.advance(request_id, steps=len(e2e.fal.positions))  # IN_PROGRESS
    await wait_text(e2e, interaction, "Generating")
    await e2e.bot.kill()
    await e2e.bot.start()
    e2e.fal.release()
    final = await wait_text(e2e, interaction, "Inpainted")
    assert len(final.attachments) == 1 and len(result_messages(e2e)) == 1 and len(e2e.fal.submits) == 1


async def test_kill_9_between_fetching_the_result_and_posting_it(make_e2e: MakeE2E) -> None:
    hold = asyncio.Event()
    e2e = await make_e2e(fake_fal={"positions": [0], "hold": True})
    interaction = await inpaint(e2e, num_images=2)
    await preview_uploaded(e2e, interaction)
    e2e.discord.upload_hold = hold  # from here on: the result's upload
    e2e.fal.release()
    await e2e.discord.wait_for(lambda: e2e.discord.uploads_held > 0, 20)
    await e2e.bot.kill()  # the result is on disk; Discord never acted on the post
    hold.set()
    await e2e.bot.start()
    final = await wait_text(e2e, interaction, "Inpainted")
    assert len(final.attachments) == 2 and len(result_messages(e2e)) == 1
    assert len(e2e.fal.submits) == 1 and e2e.fal.result_calls == 1  # delivered from disk, not fetched again


@pytest.mark.parametrize("nonces_forgotten", [False, True], ids=["within-the-nonce-window", "hours-later"])
async def test_kill_9_in_the_middle_of_a_multi_message_delivery(make_e2e: MakeE2E, nonces_forgotten: bool) -> None:
    gate = asyncio.Event()
    e2e = await make_e2e(
        # two 0.7 MB results and 1 MiB per request: the reply carries one, a second message the other
        fake_discord={"upload_gate": gate, "upload_gate_after": 10**6, "max_request_bytes": 1024 * 1024},
        fake_fal={"result_noise": True, "positions": [0], "hold": True},
        discord={"max_request_bytes": 1024 * 1024},
    )
    # all of it repainted, so each result is fal's noise as it is: pasted into a mask's area only, both would fit one
    interaction = await inpaint(e2e, mask=None, region="everything", num_images=2, output_format="png")
    await preview_uploaded(e2e, interaction)
    e2e.discord.upload_gate_after = e2e.discord.uploads_seen + 1  # the reply's part answered, the second held
    e2e.fal.release()
    await e2e.discord.wait_for(lambda: e2e.discord.uploads_waiting > 0, 30)
    await e2e.bot.kill()  # Discord posted the second message; the bot never heard back
    gate.set()
    if nonces_forgotten:
        e2e.discord._nonces.clear()  # Discord no longer knows the nonce: the bot must find its post by itself
    await e2e.bot.start()
    await eventually(e2e, logged(e2e, "delivered", start=2), "delivery by the second run")
    final = interaction.original()
    assert final is not None and "Inpainted" in visible_text(final) and len(final.attachments) == 1
    posted = result_messages(e2e)
    assert [len(m.attachments) for m in posted] == [1, 1], posted
    assert "Results 2/2" in posted[1].content and len(e2e.fal.submits) == 1


async def test_kill_9_while_checking_the_upload_asks_to_run_it_again(make_e2e: MakeE2E) -> None:
    hold = asyncio.Event()
    e2e = await make_e2e(fake_discord={"cdn_hold": hold})
    interaction = await inpaint(e2e)
    await e2e.discord.wait_for(lambda: e2e.discord.cdn_waiting > 0, 20)
    await e2e.bot.kill()  # accepted, not yet validated: the inputs were never stored
    hold.set()
    await e2e.bot.start()
    reply = await wait_text(e2e, interaction, "please run /inpaint again")
    assert reply.attachments == [] and reply.components == [] and e2e.fal.requests == []


# issue 10: the hardened core, seen from the outside


async def test_a_job_fal_never_finishes_times_out_and_frees_its_slot(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(fake_fal={"hold": True}, fal={"max_concurrent": 1, "job_timeout_s": 3})
    first = await inpaint(e2e, user="alice")
    await eventually(e2e, lambda: len(e2e.fal.submits) == 1, "the first submit")
    second = await inpaint(e2e, user="bob")
    await wait_text(e2e, second, "in this bot's queue")
    final = await wait_text(e2e, first, "did not finish this job within 3 seconds")
    assert "Nothing was charged" in final.content and final.components == []
    assert [status for _, status in e2e.fal.cancels] == ["CANCELLATION_REQUESTED"]
    await eventually(e2e, lambda: len(e2e.fal.submits) == 2, "the next member's submit")


async def test_a_garbage_result_image_fails_in_seconds(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(fake_fal={"hold": True})
    interaction = await inpaint(e2e)
    await wait_text(e2e, interaction, "Queued at fal")
    (request_id,) = e2e.fal.jobs
    e2e.fal.render_result(request_id)
    for name in list(e2e.fal.files):
        e2e.fal.files[name] = (b"\x89PNG\r\n\x1a\n garbage", "image/png")
    e2e.fal.release()
    final = await wait_text(e2e, interaction, "fal returned an image that could not be read", timeout=10)
    assert final.attachments == [] and e2e.fal.result_calls == 1


async def test_a_refusal_leaves_no_public_message(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(safety={"blocked_terms": ["forbidden"]})
    interaction = await inpaint(e2e, prompt="something forbidden")
    await e2e.discord.wait_for(lambda: bool(interaction.callbacks), 20)
    (callback,) = interaction.callbacks
    assert callback.type == 4 and "isn't allowed on this server" in callback.data["content"]
    assert [m for m in e2e.discord.messages_in("general") if not m.ephemeral] == []
    assert e2e.fal.submits == [] and not any(r.path.startswith("/cdn/") for r in e2e.discord.requests)


async def test_a_prompt_with_markdown_shows_as_typed(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e()
    interaction = await inpaint(e2e, prompt="## **huge** [click me](https://evil.example) @here")
    final = await wait_text(e2e, interaction, "Inpainted")
    description = final.embeds[0]["description"]
    assert description.startswith(r"\## \*\*huge\*\* \[click me](https://evil.example) @" + "\u200bhere")
    assert e2e.fal.submits[0]["prompt"] == "## **huge** [click me](https://evil.example) @here"  # fal gets it as typed


# issue 12: a mask from words, found by fal's segmentation endpoint before the inpainting is sent


async def test_kill_9_while_fal_looks_for_the_mask_resumes_the_same_search(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(fake_fal={"hold": True})
    interaction = await inpaint(e2e, mask=None, mask_prompt="the cup", output_format="png")
    await wait_text(e2e, interaction, "Finding “the cup” in your image")
    # the bot asks fal about the search only once it has stored the search's request id
    await eventually(e2e, lambda: len(e2e.fal.jobs) == 1 and e2e.fal.status_calls > 0, "the search being watched")
    await e2e.bot.kill()
    (search_id,) = e2e.fal.jobs
    (stored,) = stored_jobs(e2e)
    assert stored.state is JobState.SEGMENTING and stored.segment_request_id == search_id and stored.crop is None
    await e2e.bot.start()
    await eventually(e2e, logged(e2e, "resumed 1 job(s)", start=2), "the search resumed")
    e2e.fal.release()
    final = await wait_text(e2e, interaction, "Inpainted")
    await eventually(e2e, logged(e2e, "delivered", start=2), "delivery by the second run")
    (attachment,) = final.attachments
    assert Image.open(io.BytesIO(attachment.data)).size == (600, 400)
    assert [job.endpoint for job in e2e.fal.jobs.values()] == ["fal-ai/evf-sam", "fal-ai/flux-lora/inpainting"]
    assert len(e2e.fal.submits) == 2 and e2e.fal.refused == [] and e2e.fal.cancels == []
    assert len(result_messages(e2e)) == 1 and "Traceback" not in e2e.bot.log_text()
