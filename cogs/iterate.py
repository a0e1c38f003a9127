"""Building on results and images (SPEC 10): a result's buttons, the Edit modal and the message command "Inpaint
this image". They translate clicks and forms into JobService calls; modal answers are read from the interaction
itself, so a form opened before a restart still works."""

from __future__ import annotations

import io
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from bot.app import FluxpaintBot, answer_privately, refuse_privately, reply_once, start_in_channel
from bot.iterate import EditValues, Verb, message_options, parse_edit
from bot.models import InpaintOptions, Origin, Upload
from cogs.buttons import JobItem
from cogs.inpaint import origin_of, upload_of
from cogs.paint import RepaintButton

log = logging.getLogger(__name__)

JOB = r"(?P<job_id>[0-9a-f]{32})"
EDIT_MODAL = "fp:editm:"
USE_MODAL = "fp:usem:"
MESSAGE_MODAL = "fp:msgm:"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/avif", "image/bmp", "image/tiff")
PICKED_TTL_S = 30 * 60.0  # an open "Inpaint this image" form remembers its message's image this long
PICKED_MAX = 2000


def result_view(job_id: str, shown: tuple[int, ...], *, repaint: bool = False) -> discord.ui.View:
    """A result's buttons: Reroll, Edit, Mask, Delete (and Repaint, with the painter on) on the first row, one Use
    per image shown on the second (at most Discord's 5 a row; custom ids of at most 45 characters)."""
    view = discord.ui.View(timeout=None)
    for item in (RerollButton(job_id), EditButton(job_id), MaskButton(job_id), DeleteButton(job_id)):
        view.add_item(item)
    if repaint and shown:
        view.add_item(RepaintButton(job_id, shown[0]))
    for number in shown[:4]:  # numbered as the files are (result-2.jpg): a withheld image leaves a gap
        view.add_item(UseButton(job_id, number))
    return view


def _button(label: str, custom_id: str, style: discord.ButtonStyle, row: int) -> discord.ui.Button[Any]:
    return discord.ui.Button(label=label, style=style, custom_id=custom_id, row=row)


class RerollButton(JobItem, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"fp:reroll:{JOB}"):
    def __init__(self, job_id: str) -> None:
        super().__init__(_button("Reroll", f"fp:reroll:{job_id}", discord.ButtonStyle.primary, 0))
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[FluxpaintBot]) -> None:  # type: ignore[override]
        await _start_from_result(interaction, self.job_id, Verb.REROLL, intro="🎲 Rerolling…")


class EditButton(JobItem, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"fp:edit:{JOB}"):
    def __init__(self, job_id: str) -> None:
        super().__init__(_button("Edit", f"fp:edit:{job_id}", discord.ButtonStyle.secondary, 0))
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[FluxpaintBot]) -> None:  # type: ignore[override]
        await _open_edit(interaction, self.job_id, None)


class UseButton(JobItem, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"fp:use:{JOB}:(?P<number>[1-4])"):
    def __init__(self, job_id: str, number: int) -> None:
        custom_id = f"fp:use:{job_id}:{number}"
        super().__init__(_button(f"Use {number}", custom_id, discord.ButtonStyle.secondary, 1))
        self.job_id, self.number = job_id, number

    async def callback(self, interaction: discord.Interaction[FluxpaintBot]) -> None:  # type: ignore[override]
        await _open_edit(interaction, self.job_id, self.number)


class MaskButton(JobItem, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"fp:mask:{JOB}"):
    def __init__(self, job_id: str) -> None:
        super().__init__(_button("Mask", f"fp:mask:{job_id}", discord.ButtonStyle.secondary, 0))
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[FluxpaintBot]) -> None:  # type: ignore[override]
        picture = await refuse_privately(interaction, interaction.client.service.mask_picture(self.job_id))
        if picture is None:
            return
        file = discord.File(io.BytesIO(picture), filename="mask-preview.jpg")
        await interaction.response.send_message("The tinted part is what was repainted.", file=file, ephemeral=True)


class DeleteButton(JobItem, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"fp:delete:{JOB}"):
    def __init__(self, job_id: str) -> None:
        super().__init__(_button("Delete", f"fp:delete:{job_id}", discord.ButtonStyle.danger, 0))
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[FluxpaintBot]) -> None:  # type: ignore[override]
        await interaction.response.defer(ephemeral=True, thinking=True)
        await answer_privately(interaction, self._delete(interaction))

    async def _delete(self, interaction: discord.Interaction[FluxpaintBot]) -> str:
        ids = await interaction.client.service.deletable_messages(
            self.job_id, user_id=interaction.user.id, can_manage=interaction.permissions.manage_messages
        )
        clicked = [interaction.message.id] if interaction.message else []
        assert interaction.channel_id is not None
        channel = interaction.client.get_partial_messageable(interaction.channel_id, guild_id=interaction.guild_id)
        for message_id in dict.fromkeys([*clicked, *ids]):
            try:
                await channel.get_partial_message(message_id).delete()
            except discord.NotFound:
                continue  # gone already, or another part posted elsewhere (a DM)
        return "Deleted."


# the Edit and Use modal


def _edit_modal(custom_id: str, title: str, values: EditValues, max_prompt_chars: int) -> discord.ui.Modal:
    modal = discord.ui.Modal(title=title, custom_id=custom_id, timeout=None)
    fields = (
        ("Prompt", "prompt", discord.TextStyle.paragraph, values.prompt, max_prompt_chars, True, None),
        ("Strength (0.01 to 1)", "strength", discord.TextStyle.short, f"{values.strength:g}", 10, False, None),
        (
            "Seed",
            "seed",
            discord.TextStyle.short,
            "" if values.seed is None else str(values.seed),
            16,
            False,
            "Empty: a random one",
        ),
        ("Number of images (1 to 4)", "num_images", discord.TextStyle.short, str(values.num_images), 1, False, None),
    )
    for label, key, style, default, max_length, required, placeholder in fields:
        text: discord.ui.TextInput[Any] = discord.ui.TextInput(
            custom_id=key,
            style=style,
            default=default,
            max_length=max_length,
            required=required,
            placeholder=placeholder,
        )
        modal.add_item(discord.ui.Label(text=label, component=text))
    modal.stop()  # answered from the interaction data (on_interaction), not from memory: restarts don't lose it
    return modal


async def _open_edit(interaction: discord.Interaction[FluxpaintBot], job_id: str, number: int | None) -> None:
    service = interaction.client.service
    verb = Verb.EDIT if number is None else Verb.USE
    index = None if number is None else number - 1
    origin = origin_of(interaction, None, service.settings.ui.token_ttl_s)
    source = await refuse_privately(interaction, service.iteration_source(job_id, verb, origin, index=index))
    if source is None:
        return
    custom_id = f"{EDIT_MODAL}{job_id}" if number is None else f"{USE_MODAL}{job_id}:{number}"
    title = "Edit and run again" if number is None else f"Build on image {number}"
    defaults = service.edit_defaults(source)
    # a prompt longer than a limit lowered since is shown whole, and refused when sent back (as the command would)
    limit = max(service.settings.limits.max_prompt_chars, len(defaults.prompt))
    await interaction.response.send_modal(_edit_modal(custom_id, title, defaults, limit))


async def _start_from_result(
    interaction: discord.Interaction[FluxpaintBot],
    job_id: str,
    verb: Verb,
    *,
    intro: str,
    number: int | None = None,
    values: EditValues | None = None,
) -> None:
    service = interaction.client.service
    origin = origin_of(interaction, None, service.settings.ui.token_ttl_s)
    index = None if number is None else number - 1
    clicked = interaction.message.id if interaction.message is not None else None  # the result itself
    await interaction.response.defer(ephemeral=True, thinking=True)  # the checks read files: within 3 s, privately
    draft = await refuse_privately(
        interaction, service.draft(job_id, verb, origin, index=index, values=values, message_id=clicked)
    )
    if draft is None:
        return
    reference = (
        discord.MessageReference(
            message_id=draft.message_id, channel_id=draft.source.origin.channel_id, fail_if_not_exists=False
        )
        if draft.message_id is not None
        else None
    )

    async def begin(message_id: int) -> object:
        return await service.accept_draft(draft, _channel_origin(origin, message_id))

    await start_in_channel(
        interaction,
        reference=reference,
        intro=f"{intro} for <@{origin.user_id}>",
        begin=begin,
        release=lambda: service.release_check(origin),
    )


def _channel_origin(origin: Origin, message_id: int) -> Origin:
    """The job's reply is the bot's own message: the click's token has answered the clicker and is not kept."""
    return origin.model_copy(
        update={"message_id": message_id, "reply_via": "channel", "interaction_token": SecretStr("")}
    )


# modal answers


class ModalAnswer(BaseModel):
    """A modal's submitted values: text by custom id, and each file upload's attachments."""

    model_config = ConfigDict(frozen=True)

    custom_id: str
    texts: dict[str, str]
    files: dict[str, list[Upload]]

    @classmethod
    def parse(cls, data: dict[str, Any]) -> ModalAnswer:
        """Raises: pydantic.ValidationError, KeyError, TypeError: not a modal submit as Discord sends it."""
        resolved = (data.get("resolved") or {}).get("attachments") or {}
        texts: dict[str, str] = {}
        files: dict[str, list[Upload]] = {}
        stack = list(data.get("components") or [])
        while stack:
            comp = stack.pop()
            stack.extend(comp.get("components") or [])
            if "component" in comp:
                stack.append(comp["component"])
            if comp.get("type") == 4:
                texts[str(comp["custom_id"])] = str(comp.get("value") or "")
            elif comp.get("type") == 19:
                files[str(comp["custom_id"])] = [
                    Upload(
                        url=resolved[v]["url"],
                        filename=resolved[v]["filename"],
                        size=resolved[v]["size"],
                        content_type=resolved[v].get("content_type"),
                    )
                    for v in comp.get("values") or []
                ]
        return cls(custom_id=str(data["custom_id"]), texts=texts, files=files)


def _image_of(message: discord.Message) -> discord.Attachment | None:
    for attachment in message.attachments:
        kind = (attachment.content_type or "").split(";")[0].strip().lower()
        if kind in IMAGE_TYPES:
            return attachment
    return None


class Iterate(commands.Cog):
    def __init__(self, bot: FluxpaintBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Inpaint this image", callback=self.inpaint_message)
        self.menu.guild_only = True
        self.menu.allowed_contexts = app_commands.AppCommandContext(guild=True)
        # the image of each open "Inpaint this image" form, by the message it was opened on: the form's answer
        # does not carry it, and the bot may not read other members' messages afterwards (message content intent)
        self._picked: OrderedDict[int, tuple[float, Upload, int]] = OrderedDict()  # and the photo's author

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    async def inpaint_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        image = _image_of(message)
        if image is None:
            await reply_once(interaction, "That message has no image to inpaint: pick a message with a picture.")
            return
        self._picked[message.id] = (time.monotonic(), upload_of(image), message.author.id)
        self._picked.move_to_end(message.id)
        while len(self._picked) > PICKED_MAX:
            self._picked.popitem(last=False)
        modal = discord.ui.Modal(title="Inpaint this image", custom_id=f"{MESSAGE_MODAL}{message.id}", timeout=None)
        limit = self.bot.service.settings.limits.max_prompt_chars
        items: list[tuple[str, str | None, discord.ui.Item[Any]]] = [
            (
                "Prompt",
                "What to paint",
                discord.ui.TextInput(custom_id="prompt", style=discord.TextStyle.paragraph, max_length=limit),
            ),
            (
                "Mask (optional)",
                "White = repaint. Or describe it below",
                discord.ui.FileUpload(custom_id="mask", required=False, min_values=0, max_values=1),
            ),
            (
                "What to repaint (optional)",
                "Words, like “the sky”",
                discord.ui.TextInput(custom_id="mask_prompt", required=False, max_length=200),
            ),
            (
                "Strength (0.01 to 1)",
                None,
                discord.ui.TextInput(custom_id="strength", required=False, max_length=10, default="0.85"),
            ),
        ]
        for label, description, component in items:
            modal.add_item(discord.ui.Label(text=label, description=description, component=component))
        modal.stop()  # answered from the interaction data (on_interaction)
        await interaction.response.send_modal(modal)

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[FluxpaintBot]) -> None:
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        custom_id = str(data.get("custom_id", ""))
        if not custom_id.startswith((EDIT_MODAL, USE_MODAL, MESSAGE_MODAL)):
            return
        try:
            answer = ModalAnswer.parse(data)
        except (ValidationError, KeyError, TypeError):
            log.warning("a modal answer %s could not be read", custom_id[:40])
            await reply_once(interaction, "That form's answer could not be read; please try again.")
            return
        if custom_id.startswith(MESSAGE_MODAL):
            await self._inpaint_answer(interaction, answer)
        else:
            await self._edit_answer(interaction, answer)

    async def _edit_answer(self, interaction: discord.Interaction[FluxpaintBot], answer: ModalAnswer) -> None:
        if not (match := re.fullmatch(rf"fp:(editm|usem):{JOB}(?::(?P<number>[1-4]))?", answer.custom_id)):
            return
        limits = self.bot.service.settings.limits
        values = await refuse_privately(interaction, _parsed(answer, limits.max_num_images))
        if values is None:
            return
        number = int(match["number"]) if match["number"] else None
        verb = Verb.USE if number is not None else Verb.EDIT
        intro = "✏️ Editing…" if number is None else f"🧩 Building on image {number}…"
        await _start_from_result(interaction, match["job_id"], verb, intro=intro, number=number, values=values)

    async def _inpaint_answer(self, interaction: discord.Interaction[FluxpaintBot], answer: ModalAnswer) -> None:
        message_id = int(answer.custom_id.removeprefix(MESSAGE_MODAL) or 0)
        picked = self._picked.get(message_id)
        if picked is None or time.monotonic() - picked[0] > PICKED_TTL_S:
            await reply_once(interaction, "That form is too old (or I restarted); run “Inpaint this image” again.")
            return
        _, image, author_id = picked
        service = self.bot.service
        await interaction.response.defer(ephemeral=True, thinking=True)
        options = await refuse_privately(interaction, _message_options(answer))
        if options is None:
            return
        masks = answer.files.get("mask") or []
        mask = masks[0] if masks else None
        origin = origin_of(interaction, None, service.settings.ui.token_ttl_s)
        checked = await refuse_privately(interaction, _checked(service.check(options, origin, mask_file=bool(mask))))
        if checked is None:
            return  # refused, privately
        reference = discord.MessageReference(
            message_id=message_id, channel_id=origin.channel_id, fail_if_not_exists=False
        )

        origin = origin.model_copy(update={"photo_owner_id": author_id})

        async def begin(reply_id: int) -> object:
            return await service.accept(options, _channel_origin(origin, reply_id), image, mask)

        intro = f"🖌️ Inpainting this image for <@{origin.user_id}>…"
        await start_in_channel(
            interaction, reference=reference, intro=intro, begin=begin, release=lambda: service.release_check(origin)
        )


async def _checked(check: Awaitable[None]) -> bool:
    await check
    return True


async def _parsed(answer: ModalAnswer, max_num_images: int) -> EditValues:
    return parse_edit(answer.texts, max_num_images=max_num_images)


async def _message_options(answer: ModalAnswer) -> InpaintOptions:
    return message_options(answer.texts)


async def setup(bot: FluxpaintBot) -> None:
    for item in (RerollButton, EditButton, UseButton, MaskButton, DeleteButton):
        bot.add_dynamic_items(item)
    await bot.add_cog(Iterate(bot))
