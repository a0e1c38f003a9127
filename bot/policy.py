"""What a failure means for a job, decided once in one table: retry the step, go back in line, or fail (no I/O)."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from bot.decode import ImageError
from bot.downloads import DownloadError, DownloadTransientError
from bot.fal_models import (
    FalJobError,
    FalNotTakenError,
    FalRejectedError,
    FalSubmitUnknownError,
    FalTransientError,
)
from bot.progress import DeliveryError


class Step(StrEnum):
    SUBMIT = "submit"  # sending the job to fal
    WATCH = "watch"  # following fal's status until COMPLETED
    RESULT = "result"  # fal's result call
    DOWNLOAD = "download"  # fetching the result images from fal's CDN
    DECODE = "decode"  # reading and resizing a result image
    DELIVER = "deliver"  # posting the result to Discord


class Action(StrEnum):
    RETRY = "retry"  # the same step again after a pause, until the job's deadline
    REQUEUE = "requeue"  # back in the waiting line: nothing reached fal
    FAIL = "fail"  # the job ends FAILED with the error's message
    FAIL_UNKNOWN = "fail_unknown"  # FAILED, and fal may have billed it: the submit was sent but never answered


# Looked up by the exception's class and then its bases, most specific first; anything not listed fails the job
# (and is logged with its traceback when it is not one of ours).
POLICY: Final[dict[Step, dict[type[BaseException], Action]]] = {
    Step.SUBMIT: {
        FalSubmitUnknownError: Action.FAIL_UNKNOWN,  # maybe a paid job: never sent twice
        FalNotTakenError: Action.REQUEUE,  # no connection, 429 or 503 past the retries: nothing was sent
        FalTransientError: Action.FAIL,  # another 5xx: fal may have seen it, so it is never sent again
        FalRejectedError: Action.FAIL,
    },
    Step.WATCH: {
        FalTransientError: Action.RETRY,  # the job is still fal's; a status call failing changes nothing there
        FalJobError: Action.FAIL,
        FalRejectedError: Action.FAIL,
    },
    Step.RESULT: {
        FalTransientError: Action.RETRY,
        FalJobError: Action.FAIL,
        FalRejectedError: Action.FAIL,
    },
    Step.DOWNLOAD: {
        DownloadTransientError: Action.RETRY,
        DownloadError: Action.FAIL,  # a host off the list or a file over the cap stays so
    },
    Step.DECODE: {
        ImageError: Action.FAIL,  # the same bytes will not decode the next time
    },
    Step.DELIVER: {
        DeliveryError: Action.RETRY,  # refined by ``DeliveryError.transient`` in ``decide``
    },
}


def decide(step: Step, exc: BaseException) -> Action:
    """The action for ``exc`` raised during ``step``; FAIL when the table does not list it."""
    if isinstance(exc, DeliveryError) and not exc.transient:
        return Action.FAIL
    table = POLICY[step]
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return Action.FAIL
