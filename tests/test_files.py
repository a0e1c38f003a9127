from pathlib import Path

import pytest

from bot.files import JobFiles
from bot.models import new_job_id


@pytest.fixture
def files(tmp_path: Path) -> JobFiles:
    return JobFiles(tmp_path)


def test_write_then_read_round_trips(files: JobFiles, tmp_path: Path) -> None:
    job_id = new_job_id()
    files.write(job_id, "input.jpg", b"\xff\xd8 jpeg bytes")
    assert files.read(job_id, "input.jpg") == b"\xff\xd8 jpeg bytes"
    assert files.exists(job_id, "input.jpg")
    assert files.path(job_id, "input.jpg") == tmp_path / "jobs" / job_id / "input.jpg"


def test_write_replaces_whole_file_and_leaves_no_temp_files(files: JobFiles) -> None:
    job_id = new_job_id()
    files.write(job_id, "mask.png", b"a much longer first version")
    files.write(job_id, "mask.png", b"short")
    assert files.read(job_id, "mask.png") == b"short"
    assert [p.name for p in files.folder(job_id).iterdir()] == ["mask.png"]


def test_missing_file_is_not_there(files: JobFiles) -> None:
    job_id = new_job_id()
    assert not files.exists(job_id, "result-1.jpg")
    with pytest.raises(FileNotFoundError):
        files.read(job_id, "result-1.jpg")


def test_remove_deletes_only_that_job_and_tolerates_missing(files: JobFiles) -> None:
    keep, drop = new_job_id(), new_job_id()
    files.write(keep, "input.png", b"1")
    files.write(drop, "input.png", b"2")
    files.write(drop, "result-1.png", b"3")
    files.remove(drop)
    assert not files.folder(drop).exists()
    assert files.read(keep, "input.png") == b"1"
    files.remove(drop)  # already gone
    files.remove(new_job_id())  # never existed


@pytest.mark.parametrize(
    "job_id",
    ["..", ".", "../etc", "a/b", "a\\b", "", "/abs", "x" * 65, "ä"],
    ids=["dotdot", "dot", "parent", "slash", "backslash", "empty", "absolute", "too-long", "non-ascii"],
)
def test_bad_job_ids_are_refused(files: JobFiles, job_id: str) -> None:
    with pytest.raises(ValueError):
        files.write(job_id, "input.png", b"x")
    with pytest.raises(ValueError):
        files.remove(job_id)


@pytest.mark.parametrize(
    "name",
    ["..", ".", "../input.png", "a/b.png", "/etc/passwd", "a\\b", "", ".hidden", "x..png", "a\x00b"],
    ids=["dotdot", "dot", "parent", "slash", "absolute", "backslash", "empty", "hidden", "double-dot", "nul"],
)
def test_bad_names_are_refused(files: JobFiles, name: str, tmp_path: Path) -> None:
    job_id = new_job_id()
    with pytest.raises(ValueError):
        files.write(job_id, name, b"x")
    with pytest.raises(ValueError):
        files.read(job_id, name)
    with pytest.raises(ValueError):
        files.exists(job_id, name)
    assert not (tmp_path / "jobs").exists()


def test_legacy_style_ids_are_allowed(files: JobFiles) -> None:
    files.write("job-42_a", "result-1.png", b"ok")
    assert files.read("job-42_a", "result-1.png") == b"ok"
