"""The bot within Discord's limits, against the fakes: a request budget for everything, positions worth reading."""

from __future__ import annotations

import asyncio

from tests.conftest import MakeRig
from tests.e2e.harness import poll_until
from tests.fakes.discord import RecordedRequest, peak_in_window
from tests.rig import fixture

COFFEE, COFFEE_MASK = fixture("coffee.png"), fixture("coffee_mask.png")


def reply_texts(requests: list[RecordedRequest], message_id: int) -> list[str]:
    """Every text the bot sent for one message, in order, by any edit route."""
    return [
        str(r.json.get("content"))
        for r in requests
        if r.method == "PATCH" and r.path.endswith(f"/messages/{message_id}") and isinstance(r.json, dict)
    ]


async def test_a_job_far_back_shows_a_round_place_and_is_not_edited_for_every_move(make_rig: MakeRig) -> None:
    # a roomy edit window (learnt from the headers), so only the refresh time can hold an update back
    rig = await make_rig(fal={"hold": True, "positions": [483, 470, 400, 3]}, discord={"edit_rate": (50, 5.0)})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    reply = await rig.wait_text(interaction, "about 480th in line")
    (request_id,) = rig.fal.jobs
    for _ in range(2):  # 470, then 400: new round places, but far back they may wait minutes to be shown
        calls = rig.fal.status_calls
        rig.fal.advance(request_id)
        await poll_until(lambda c=calls: rig.fal.status_calls >= c + 2, "the bot read the new position", 10)
    rig.fal.advance(request_id)  # 3: near the front, shown without delay
    await rig.wait_text(interaction, "position 3")
    texts = reply_texts(rig.discord.requests, reply.id)
    assert not any("470th" in t or "400th" in t for t in texts), texts
    rig.fal.release()
    final = await rig.wait_text(interaction, "Inpainted")
    assert len(final.attachments) == 1 and rig.discord.rate_limited == []


async def test_every_request_to_discord_stays_within_the_budget(make_rig: MakeRig) -> None:
    budget = 5
    rig = await make_rig(
        discord={"global_rate": (budget, 1.0)},  # the fake Discord refuses what the budget would let through
        fal={"positions": [9, 8, 7, 6, 5, 4, 3, 2, 1, 0], "in_progress_steps": 4},  # a change at every poll
        discord_settings={"max_requests_per_s": budget},
    )
    members = ["alice", "bob", "mod", "admin"]
    interactions = [await rig.inpaint(COFFEE, COFFEE_MASK, user=name) for name in members]
    for interaction in interactions:
        final = await rig.wait_text(interaction, "Inpainted", timeout=60)
        assert len(final.attachments) == 1
    # the API, not the CDN (the bot's own downloads), and not the acknowledgements (counted but never held back)
    sent = [r.real_time for r in rig.discord.requests if r.path.startswith("/api/") and "/callback" not in r.path]
    # 0.95 s: the fake stamps a request when it has read it, a few milliseconds after the bot let it go
    assert peak_in_window(sent, 0.95) <= budget
    assert rig.discord.rate_limited == [] and len(rig.fal.submits) == len(members)


async def test_a_burst_of_commands_from_one_member_is_capped_privately(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True})  # two unfinished jobs per member by default
    burst = await asyncio.gather(*(rig.inpaint(COFFEE, COFFEE_MASK, user="alice") for _ in range(6)))
    await rig.discord.wait_for(lambda: all(i.callbacks for i in burst))
    deferred = [i for i in burst if i.callbacks[0].type == 5]
    refused = [i for i in burst if i.callbacks[0].type == 4]
    assert len(deferred) == 2 and len(refused) == 4
    for interaction in refused:  # before anything was public: the checks counted the commands still on their way
        original = interaction.original()
        assert original is not None and original.ephemeral and "unfinished jobs" in original.content
    for interaction in deferred:
        await rig.wait_text(interaction, "Queued at fal")
    public = [m for m in rig.discord.messages_in("general") if not m.ephemeral]
    assert len(public) == 2 and len(rig.fal.jobs) == 2
