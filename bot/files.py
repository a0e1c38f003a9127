"""Per-job files under ``data_dir/jobs/<job_id>/``: atomic writes, no path outside that folder; synchronous."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PREVIEW_FILE = "mask-preview.jpg"  # the job's image with the area to repaint tinted: shown in its reply (SPEC 11)

_JOB_ID = re.compile(r"[0-9a-f]{32}|[A-Za-z0-9_-]{1,64}")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def _check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"not a valid job id: {job_id!r}")
    return job_id


def _check_name(name: str) -> str:
    # one plain file name: no separators, no "." or "..", no hidden or temp names
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"not a valid file name: {name!r}")
    return name


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # a file system that cannot sync a directory: the file itself was synced before the rename
    finally:
        os.close(fd)


class JobFiles:
    """Stores each job's inputs and results in its own folder; callers use ``asyncio.to_thread``."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "jobs"

    def __repr__(self) -> str:
        return f"JobFiles({str(self.root)!r})"

    def folder(self, job_id: str) -> Path:
        """The job's folder (it may not exist yet).

        Raises:
            ValueError: ``job_id`` is not a job id.
        """
        return self.root / _check_job_id(job_id)

    def path(self, job_id: str, name: str) -> Path:
        """Where ``name`` of ``job_id`` lives.

        Raises:
            ValueError: ``job_id`` or ``name`` would leave the job's folder.
        """
        return self.folder(job_id) / _check_name(name)

    def write(self, job_id: str, name: str, data: bytes) -> None:
        """Write the whole file or nothing: a temp file in the same folder, fsync, rename, fsync the folder."""
        target = self.path(job_id, name)
        created = not target.parent.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
        if created:
            _fsync_dir(target.parent.parent)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(target.parent)

    def read(self, job_id: str, name: str) -> bytes:
        """Raises: FileNotFoundError if the job has no such file."""
        return self.path(job_id, name).read_bytes()

    def exists(self, job_id: str, name: str) -> bool:
        return self.path(job_id, name).is_file()

    def remove(self, job_id: str) -> None:
        """Delete the job's folder and everything in it; a missing folder is fine."""
        folder = self.folder(job_id)
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            return
        log.debug("job=%s files removed", job_id)
