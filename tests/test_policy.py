import sqlite3

import pytest

from bot.decode import ImageError
from bot.downloads import DownloadError, DownloadTooLargeError, DownloadTransientError
from bot.fal_models import FalJobError, FalNotTakenError, FalRejectedError, FalSubmitUnknownError, FalTransientError
from bot.policy import Action, Step, decide
from bot.progress import DeliveryError


@pytest.mark.parametrize(
    ("step", "error", "action"),
    [
        (Step.SUBMIT, FalNotTakenError("429 past the retries"), Action.REQUEUE),
        (Step.SUBMIT, FalTransientError("HTTP 500 from the queue"), Action.FAIL),
        (Step.SUBMIT, FalSubmitUnknownError("read timeout after sending"), Action.FAIL_UNKNOWN),
        (Step.SUBMIT, FalRejectedError("422"), Action.FAIL),
        (Step.WATCH, FalTransientError("status 503"), Action.RETRY),
        (Step.WATCH, FalJobError("completed with an error"), Action.FAIL),
        (Step.RESULT, FalTransientError("result 502"), Action.RETRY),
        (Step.RESULT, FalJobError("result gone"), Action.FAIL),
        (Step.DOWNLOAD, DownloadTransientError("timed out"), Action.RETRY),
        (Step.DOWNLOAD, DownloadTooLargeError("over the cap"), Action.FAIL),
        (Step.DOWNLOAD, DownloadError("host not allowed"), Action.FAIL),
        (Step.DECODE, ImageError("fal returned an image that could not be read."), Action.FAIL),
        (Step.DELIVER, DeliveryError("Discord answered 503", transient=True), Action.RETRY),
        (Step.DELIVER, DeliveryError("Discord answered 400", transient=False), Action.FAIL),
        (Step.DELIVER, OSError("disk full"), Action.FAIL),
        (Step.WATCH, sqlite3.OperationalError("database is locked"), Action.FAIL),
        (Step.SUBMIT, KeyError("a bug"), Action.FAIL),
    ],
    ids=lambda v: v.value if isinstance(v, Step | Action) else type(v).__name__,
)
def test_each_failure_has_one_meaning(step: Step, error: Exception, action: Action) -> None:
    assert decide(step, error) is action
