"""fal's rules for the fake fal's submits: the published input schema of each endpoint it serves, and 422
``detail`` entries in pydantic's words, as fal's FastAPI answers them. Pure; one validator per endpoint and process."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from tests.specs import choices, leaves, load, missing_key

# the endpoints the fake fal serves: the vendored file with fal's schemas and where the input schema sits in it
INPUT_SCHEMAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "fal-ai/flux-lora/inpainting": ("fal-flux-lora-inpainting.schema.json", ("input",)),
    "fal-ai/evf-sam": ("fal-segmentation-schemas.json", ("endpoints", "fal-ai/evf-sam", "input")),
}


@dataclass(frozen=True)
class InputSchema:
    """fal's input model of one endpoint: what a submit body must pass, in the order fal reports its fields."""

    validator: Draft202012Validator
    order: tuple[str, ...]  # x-fal-order-properties: pydantic checks (and reports) the fields in this order
    file_inputs: tuple[str, ...]  # URL fields the runner downloads (x-fal-file-input)

    def problems(self, body: Any) -> list[dict[str, Any]]:
        """The 422 ``detail`` fal answers for ``body`` (pydantic's wording); empty when fal accepts it."""
        detail = [_detail(leaf) for error in self.validator.iter_errors(body) for leaf in leaves(error)]
        rank = {name: n for n, name in enumerate(self.order)}
        return sorted(detail, key=lambda d: rank.get(str(d["loc"][1]), len(rank)) if len(d["loc"]) > 1 else -1)


@functools.cache
def input_schema(endpoint: str) -> InputSchema | None:
    """The published input schema of ``endpoint``, read once per process; None for an endpoint not served here."""
    if endpoint not in INPUT_SCHEMAS:
        return None
    filename, where = INPUT_SCHEMAS[endpoint]
    schema: dict[str, Any] = load(filename)
    for key in where:
        schema = schema[key]
    order = tuple(schema.get("x-fal-order-properties") or schema.get("properties", {}))
    files = tuple(n for n in order if schema.get("properties", {}).get(n, {}).get("x-fal-file-input"))
    return InputSchema(Draft202012Validator(schema), order, files)


PYDANTIC_TYPES = {
    "integer": ("int_type", "Input should be a valid integer"),
    "number": ("float_type", "Input should be a valid number"),
    "string": ("string_type", "Input should be a valid string"),
    "boolean": ("bool_type", "Input should be a valid boolean"),
    "array": ("list_type", "Input should be a valid list"),
    "object": ("dict_type", "Input should be a valid dictionary"),
}


def _detail(error: ValidationError) -> dict[str, Any]:
    """One schema violation as fal's FastAPI words it: ``{"loc": ["body", field, ...], "msg", "type"}``."""
    loc: list[str | int] = ["body", *error.absolute_path]
    keyword, bound, value = error.validator, error.validator_value, error.instance
    if keyword == "required":
        missing = missing_key(error)
        return {"loc": [*loc, missing], "msg": "Field required", "type": "missing"}
    bounds = {
        "maximum": ("less_than_equal", "less than or equal to"),
        "exclusiveMaximum": ("less_than", "less than"),
        "minimum": ("greater_than_equal", "greater than or equal to"),
        "exclusiveMinimum": ("greater_than", "greater than"),
    }
    if keyword in bounds:
        kind, words = bounds[keyword]
        return {"loc": loc, "msg": f"Input should be {words} {bound}", "type": kind}
    if (allowed := choices(error)) is not None:
        quoted = [repr(v) for v in allowed]
        words = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
        return {"loc": loc, "msg": f"Input should be {words}", "type": "literal_error"}
    if keyword == "type":
        wanted = [bound] if isinstance(bound, str) else [t for t in bound if t != "null"]
        if wanted == ["integer"] and isinstance(value, str):
            return {
                "loc": loc,
                "msg": "Input should be a valid integer, unable to parse string as an integer",
                "type": "int_parsing",
            }
        if wanted == ["integer"] and isinstance(value, float):
            return {
                "loc": loc,
                "msg": "Input should be a valid integer, got a number with a fractional part",
                "type": "int_from_float",
            }
        if wanted == ["object"] and loc == ["body"]:
            return {
                "loc": loc,
                "msg": "Input should be a valid dictionary or object to extract fields from",
                "type": "model_attributes_type",
            }
        kind, msg = PYDANTIC_TYPES.get(wanted[0] if wanted else "", ("value_error", error.message))
        return {"loc": loc, "msg": msg, "type": kind}
    if keyword in ("minLength", "maxLength"):
        words = "at least" if keyword == "minLength" else "at most"
        kind = "string_too_short" if keyword == "minLength" else "string_too_long"
        return {"loc": loc, "msg": f"String should have {words} {bound} characters", "type": kind}
    return {"loc": loc, "msg": error.message, "type": "value_error"}
