"""Errors whose text members may see as is; never holds secrets or tracebacks."""

from __future__ import annotations


class UserFacingError(Exception):
    """Base for errors whose ``str()`` is a complete, safe sentence for the member."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(UserFacingError):
    """The member's input cannot be used; nothing was submitted or charged."""


class RefusedError(UserFacingError):
    """The request is valid but not allowed now (limits, budgets, access)."""


def user_message(exc: BaseException) -> str:
    if isinstance(exc, UserFacingError):
        return exc.message
    return "Something went wrong on our side. Nothing was charged; please try again in a minute."
