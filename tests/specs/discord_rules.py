"""Discord's rules for the fake Discord's requests: its published OpenAPI spec, kept to the docs where they are
stricter and relaxed where they take what the spec refuses, plus the command rules only the docs give.

Everything here is pure: problems come back as ``(path, code, message)`` in Discord's words, and the fake answers
them as 400/50035. Validators are built once per route and process.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.specs import choices, leaves, load, missing_key

FormError = tuple[list[str | int], str, str]  # where in the body, Discord's error code, its message

SPEC_URI = "urn:discord-openapi-bot-subset"
SNOWFLAKE_REF = {"$ref": f"{SPEC_URI}#/components/schemas/SnowflakeType"}
# routes the bot subset lacks: their query parameters as Discord's docs give them
DOCUMENTED_QUERIES: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("GET", "/channels/{channel_id}/messages"): {
        "limit": {"type": "integer", "minimum": 1, "maximum": 100},
        **{anchor: SNOWFLAKE_REF for anchor in ("around", "before", "after")},
    },
}
QUERY_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}  # Discord takes True/true/1, False/false/0


@functools.cache
def discord_spec() -> dict[str, Any]:
    """The vendored OpenAPI document, read once, with the spec made to agree with Discord's docs (never the file)."""
    spec = load("discord-openapi-bot-subset.json")
    schemas = spec["components"]["schemas"]
    # false positives (reference 2.5, pitfall 10): discord.py numbers new uploads 0, 1, ... ("snowflake or number"
    # in the docs), and sends default_member_permissions as a number where the docs say string
    attachment = schemas["MessageAttachmentRequest"]["properties"]
    attachment["id"] = {"anyOf": [attachment["id"], {"type": "integer", "minimum": 0}]}
    for name in ("ApplicationCommandCreateRequest", "ApplicationCommandUpdateRequest"):
        props = schemas[name]["properties"]
        props["default_member_permissions"] = {
            "anyOf": [props["default_member_permissions"], {"type": "string", "pattern": "^(0|[1-9][0-9]*)$"}]
        }
    # one more of the first kind, not in the reference: discord.py's AllowedMentions sends user and role ids as
    # numbers ([x.id for x in users]), which Discord takes; the spec's SnowflakeType is a string
    mentions = schemas["MessageAllowedMentionsRequest"]["properties"]
    for key in ("users", "roles"):
        mentions[key]["items"] = {"anyOf": [mentions[key]["items"], {"type": "integer", "minimum": 0}]}
    # and the same for a reply's reference: discord.py's MessageReference.to_dict() sends its ids as numbers
    reference = schemas["MessageReferenceRequest"]["properties"]
    for key in ("message_id", "channel_id", "guild_id"):
        reference[key] = {"anyOf": [reference[key], {"type": "integer", "minimum": 0}]}
    # stricter in the docs: message content at most 2000 characters (the spec allows 4000 on the channel routes),
    # and an embed field's name and value may not be empty
    for name in ("MessageCreateRequest", "MessageEditRequestPartial"):
        schemas[name]["properties"]["content"]["maxLength"] = 2000
    for key in ("name", "value"):
        schemas["RichEmbedField"]["properties"][key]["minLength"] = 1
    # and a choice's string value at most 100 characters, in a command's choices and in autocomplete results alike
    # (the spec allows 6000)
    schemas["ApplicationCommandOptionStringChoice"]["properties"]["value"]["maxLength"] = 100
    _enums_from_consts(spec)
    return spec


def _enums_from_consts(node: Any) -> None:
    """``oneOf`` of ``const`` (the spec's enum types, such as ButtonStyleTypes) as the equal ``enum``: a third of
    the time a body takes to check, and one problem naming every value instead of one per branch."""
    if isinstance(node, list):
        for item in node:
            _enums_from_consts(item)
    if not isinstance(node, dict):
        return
    branches = node.get("oneOf")
    if branches and all(
        isinstance(b, dict) and "const" in b and set(b) <= {"const", "title", "description"} for b in branches
    ):
        node["enum"] = [b["const"] for b in node.pop("oneOf")]
    for value in node.values():
        _enums_from_consts(value)


@functools.cache
def _registry() -> Registry[Any]:
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(discord_spec()))
    return registry


def _ref(*parts: str) -> dict[str, str]:
    """A ``$ref`` to a place in the spec, by its JSON pointer's parts."""
    return {"$ref": f"{SPEC_URI}#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)}


@dataclass(frozen=True)
class OperationSchema:
    """What Discord checks of one route's requests: the JSON body, and each query parameter by name."""

    body: Draft202012Validator | None
    query: dict[str, tuple[str | None, Draft202012Validator]]  # name -> (its JSON type, for coercion; validator)

    def query_problems(self, query: Mapping[str, str]) -> list[FormError]:
        """What Discord would refuse in these query parameters (only those the route documents are read)."""
        problems = []
        for name, (kind, validator) in self.query.items():
            if name in query:
                value = _query_value(query[name], kind)
                problems += [form_error(leaf, [name]) for e in validator.iter_errors(value) for leaf in leaves(e)]
        return problems

    def body_problems(self, payload: Any) -> list[FormError]:
        """Every problem Discord would report for this JSON body (or multipart ``payload_json``)."""
        if self.body is None:
            return []
        return [form_error(leaf) for e in self.body.iter_errors(payload) for leaf in leaves(e)]


@functools.cache
def operation_schema(method: str, path: str) -> OperationSchema:
    """Validators for ``method path`` of the spec, built once per process; a route the subset lacks checks nothing."""
    operation = discord_spec()["paths"].get(path, {}).get(method.lower())
    if operation is None:
        documented = DOCUMENTED_QUERIES.get((method, path), {})
        query = {name: (schema.get("type"), _validator(schema)) for name, schema in documented.items()}
        return OperationSchema(None, query)
    where = ("paths", path, method.lower())
    query = {
        param["name"]: (param["schema"].get("type"), _validator(_ref(*where, "parameters", str(n), "schema")))
        for n, param in enumerate(operation.get("parameters", []))
        if param["in"] == "query"
    }
    content = operation.get("requestBody", {}).get("content", {})
    # multipart bodies carry the same JSON as their payload_json part (tests/specs/README.md)
    body = (
        _ref(*where, "requestBody", "content", "application/json", "schema") if "application/json" in content else None
    )
    return OperationSchema(_validator(body) if body else None, query)


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, registry=_registry())


def _query_value(raw: str, kind: str | None) -> Any:
    if kind == "boolean":
        return QUERY_BOOLEANS.get(raw.lower(), raw)
    if kind == "integer" and re.fullmatch(r"-?[0-9]+", raw):
        return int(raw)
    return raw


TYPE_ERRORS = {
    "integer": ("NUMBER_TYPE_COERCE", 'Value "{}" is not int.'),
    "number": ("NUMBER_TYPE_COERCE", 'Value "{}" is not a number.'),
    "boolean": ("BASE_TYPE_BOOLEAN", "Must be either true or false."),
    "string": ("BASE_TYPE_STRING", "Must be a string."),
    "array": ("LIST_TYPE_CONVERT", "Only iterables may be used in a ListType"),
    "object": ("DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType"),
}


def form_error(error: ValidationError, prefix: list[str | int] | None = None) -> FormError:
    """One schema violation as Discord words it: where in the body, code and message (codes as Discord's if known)."""
    path: list[str | int] = [*(prefix or []), *error.absolute_path]
    keyword, bound, schema, value = error.validator, error.validator_value, error.schema, error.instance
    if keyword == "required":
        missing = missing_key(error)
        return [*path, missing], "BASE_TYPE_REQUIRED", "This field is required"
    if keyword in ("minLength", "maxLength", "minItems", "maxItems"):
        unit = keyword.removeprefix("min").removeprefix("max")
        low, high = schema.get(f"min{unit}"), schema.get(f"max{unit}")
        if low and high is not None:
            return path, "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length."
        if keyword.startswith("max"):
            return path, "BASE_TYPE_MAX_LENGTH", f"Must be {bound} or fewer in length."
        return path, "BASE_TYPE_MIN_LENGTH", f"Must be {bound} or more in length."
    if keyword in ("maximum", "exclusiveMaximum"):
        return path, "NUMBER_TYPE_MAX", f"int value should be less than or equal to {bound}."
    if keyword in ("minimum", "exclusiveMinimum"):
        return path, "NUMBER_TYPE_MIN", f"int value should be greater than or equal to {bound}."
    if (allowed := choices(error)) is not None:
        return path, "BASE_TYPE_CHOICES", f"Value must be one of {allowed}."
    if keyword == "pattern" and schema.get("format") == "snowflake":
        return path, "NUMBER_TYPE_COERCE", f'Value "{value}" is not snowflake.'
    if keyword == "type":
        wanted = [bound] if isinstance(bound, str) else [t for t in bound if t != "null"]
        code, message = TYPE_ERRORS.get(wanted[0] if wanted else "", ("BASE_TYPE_INVALID", "{}"))
        return path, code, message.format(value)
    return path, "BASE_TYPE_INVALID", error.message


# autocomplete results: the spec's union of their data, narrowed to the focused option's type

AUTOCOMPLETE_DATA = {  # option type -> the spec's schema of a type 8 callback's data for it
    3: "InteractionApplicationCommandAutocompleteCallbackStringData",
    4: "InteractionApplicationCommandAutocompleteCallbackIntegerData",
    10: "InteractionApplicationCommandAutocompleteCallbackNumberData",
}


def autocomplete_result_problems(payload: Any, option_type: int) -> list[FormError]:
    """Every problem Discord would report in a callback of type 8 (APPLICATION_COMMAND_AUTOCOMPLETE_RESULT) that
    answers an option of ``option_type``: the spec's request, its data held to the option's branch of the union."""
    return [form_error(leaf) for e in _autocomplete_result(option_type).iter_errors(payload) for leaf in leaves(e)]


@functools.cache
def _autocomplete_result(option_type: int) -> Draft202012Validator:
    # the spec's data is a union of three branches that only the interaction tells apart (by the focused option's
    # type), so a generic check reports the first branch's problems: the integer ones for a string option
    request = ("components", "schemas", "ApplicationCommandAutocompleteCallbackRequest")
    data = AUTOCOMPLETE_DATA[option_type]  # KeyError: Discord autocompletes only these three types
    schema = {
        "type": "object",
        "properties": {"type": _ref(*request, "properties", "type"), "data": _ref("components", "schemas", data)},
        "required": discord_spec()["components"]["schemas"][request[-1]]["required"],
    }
    return _validator(schema)


# application commands: what the docs add to the spec

COMMANDS_PER_TYPE = {1: 100, 2: 15, 3: 15}  # CHAT_INPUT, USER, MESSAGE: what one scope may hold
CHAT_INPUT_NAME = re.compile(r"[-_'\w]{1,32}")  # the docs' \p{L}\p{N} and friends, lower case only
MAX_COMMAND_CHARS = 8000


def command_problems(commands: list[dict[str, Any]]) -> list[FormError]:
    """What Discord's docs refuse in a bulk overwrite that the spec lets through (its shape is checked before)."""
    problems: list[FormError] = []
    seen: dict[tuple[int, str], int] = {}
    for index, command in enumerate(commands):
        kind, name = command.get("type") or 1, command["name"]
        if (kind, name) in seen:
            problems.append(([index, "name"], "APPLICATION_COMMANDS_DUPLICATE_NAME", "Command names must be unique"))
        seen[kind, name] = index
        description = command.get("description") or ""
        if kind == 1:
            if not CHAT_INPUT_NAME.fullmatch(name) or name != name.lower():
                problems.append(([index, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"))
            if not 1 <= len(description) <= 100:
                problems.append(
                    ([index, "description"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
                )
        elif description:
            problems.append(([index, "description"], "APPLICATION_COMMAND_INVALID_DESCRIPTION", "Must be empty."))
        problems += _option_problems([index, "options"], command.get("options") or [])
        if _command_chars(command) > MAX_COMMAND_CHARS:
            message = f"Command exceeds maximum size ({MAX_COMMAND_CHARS})"
            problems.append(([index], "APPLICATION_COMMAND_TOO_LARGE", message))
    for kind, limit in COMMANDS_PER_TYPE.items():
        if sum((c.get("type") or 1) == kind for c in commands) > limit:
            problems.append(([], "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer commands of type {kind}."))
    return problems


def _option_problems(path: list[str | int], options: list[dict[str, Any]]) -> list[FormError]:
    problems: list[FormError] = []
    names = [o["name"] for o in options]
    optional_seen = False
    for n, option in enumerate(options):
        where = [*path, n]
        if not CHAT_INPUT_NAME.fullmatch(option["name"]) or option["name"] != option["name"].lower():
            problems.append(([*where, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"))
        if names.count(option["name"]) > 1:
            message = "Option names must be unique"
            problems.append(([*where, "name"], "APPLICATION_COMMAND_OPTION_NAME_ALREADY_EXISTS", message))
        if option["type"] in (1, 2):  # subcommand (group): its own options
            problems += _option_problems([*where, "options"], option.get("options") or [])
            continue
        if option.get("required"):
            if optional_seen:
                message = "Required options must be placed before non-required options"
                problems.append(([*where, "required"], "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID_ORDER", message))
        else:
            optional_seen = True
    return problems


def _command_chars(node: dict[str, Any]) -> int:
    """Characters of names, descriptions and choice values: Discord caps their sum per command."""
    count = len(node.get("name") or "") + len(node.get("description") or "")
    count += sum(_command_chars(option) for option in node.get("options") or [])
    for choice in node.get("choices") or []:
        count += len(choice["name"]) + len(str(choice["value"]))
    return count
