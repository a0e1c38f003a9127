"""The vendored schemas of Discord and fal (README.md): reading them, and picking the problems a service reports."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jsonschema.exceptions import ValidationError, relevance

SPECS = Path(__file__).resolve().parent


def load(name: str) -> dict[str, Any]:
    """A fresh copy of a vendored file; callers cache what they build from it."""
    data: dict[str, Any] = json.loads((SPECS / name).read_text())
    return data


def leaves(error: ValidationError) -> list[ValidationError]:
    """The problems to report for one violation: itself or, for a union none of whose branches fits (``anyOf``,
    ``oneOf``), every problem of the branch that was meant, as the services do. The branches that refuse the value
    of the union's discriminator (the property most of them check by ``enum`` or ``const``, such as ``type``), or
    that are the ``null`` of a nullable value, were not meant."""
    if not error.context:
        return [error]
    branches: dict[Any, list[ValidationError]] = {}
    for problem in error.context:
        branches.setdefault(problem.relative_schema_path[0], []).append(problem)
    key = _discriminator(branches.values())
    meant = [b for b in branches.values() if not any(_not_meant(p, key) for p in b)]
    if not meant:  # the discriminator fits no branch: one problem, with every value some branch takes
        return [_any_of_values(error, [p for b in branches.values() for p in b if _not_meant(p, key)])]
    best = min(meant, key=lambda branch: min(relevance(p) for p in branch))  # the deepest problem's branch
    return [leaf for problem in best for leaf in leaves(problem)]


def missing_key(error: ValidationError) -> str:
    """The property a ``required`` violation is about (jsonschema reports each missing one on its own)."""
    absent = [str(key) for key in error.validator_value if key not in error.instance]
    return next((key for key in absent if error.message == f"{key!r} is a required property"), absent[0])


def choices(error: ValidationError) -> list[Any] | None:
    """The values an ``enum`` or a ``const`` allows; None for other violations."""
    if error.validator == "enum":
        return list(error.validator_value)
    if error.validator == "const":
        return [error.validator_value]
    return None


def _any_of_values(union: ValidationError, refusals: list[ValidationError]) -> ValidationError:
    """Every branch refuses the same property's value (``type``): one ``enum`` problem with all they take."""
    where = refusals[0].relative_path
    if any(p.relative_path != where or choices(p) is None for p in refusals):
        return union
    allowed = sorted({value for p in refusals for value in choices(p) or []}, key=lambda v: (isinstance(v, str), v))
    first = refusals[0]
    message = f"{first.instance!r} is not one of {allowed!r}"
    return ValidationError(
        message, validator="enum", validator_value=allowed, instance=first.instance, path=[*first.absolute_path]
    )


def _discriminator(branches: Iterable[list[ValidationError]]) -> Any:
    counts: Counter[Any] = Counter()
    for branch in branches:
        counts.update({p.relative_path[0] for p in branch if _value_refused(p)})
    return max(counts, key=lambda prop: counts[prop]) if counts else None


def _value_refused(problem: ValidationError) -> bool:
    return len(problem.relative_path) == 1 and problem.validator in ("enum", "const")


def _not_meant(problem: ValidationError, discriminator: Any) -> bool:
    if _value_refused(problem) and problem.relative_path[0] == discriminator:
        return True
    return not problem.relative_path and problem.validator == "type" and problem.validator_value == "null"
