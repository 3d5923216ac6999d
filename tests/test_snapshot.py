"""The start-up snapshot: a new process reads the same as one that built everything itself,
and a snapshot that is missing, broken or unwritable costs time, never an answer."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from riskset import snapshot

from .conftest import JESSICA, ROOT

ASSESS = [sys.executable, "-m", "riskset", "assess", "--json", JESSICA]


def run_assess(cache: str) -> dict[str, object]:
    env = {**os.environ, "RISKSET_CACHE_DIR": cache}
    proc = subprocess.run(ASSESS, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_a_process_started_from_the_snapshot_reads_exactly_as_one_that_built_it(
    tmp_path: Path,
) -> None:
    built = run_assess(str(tmp_path))
    assert sorted(p.name.split("-")[0] for p in tmp_path.glob("*.pickle")) == [
        "context",
        "knowledge",
        "normalizer",
        "targets",
    ]
    assert run_assess(str(tmp_path)) == built == run_assess(snapshot.OFF)


def test_a_broken_snapshot_is_rebuilt(tmp_path: Path) -> None:
    expected = run_assess(str(tmp_path))
    for path in tmp_path.glob("*.pickle"):
        path.write_bytes(b"not a pickle")
    assert run_assess(str(tmp_path)) == expected
    assert all(p.read_bytes() != b"not a pickle" for p in tmp_path.glob("*.pickle"))


def test_an_unwritable_cache_folder_still_gives_an_answer(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file-not-a-folder"
    blocked.write_text("")
    assert run_assess(str(blocked / "cache")) == run_assess(snapshot.OFF)


def test_a_snapshot_of_an_older_key_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RISKSET_CACHE_DIR", str(tmp_path))
    (tmp_path / "numbers-0000000000000000.pickle").write_bytes(b"old")
    assert snapshot.cached("numbers", lambda: [1, 2, 3]) == [1, 2, 3]
    assert [p.name for p in tmp_path.glob("numbers-*")] == [f"numbers-{snapshot.key()}.pickle"]
    # Read back from the snapshot, not built again.
    assert snapshot.cached("numbers", lambda: [4]) == [1, 2, 3]


def test_the_key_changes_when_a_data_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "riskset"
    shutil.copytree(ROOT / "riskset", package, ignore=shutil.ignore_patterns("static"))
    monkeypatch.setattr(snapshot.resources, "files", lambda name: package)

    def key_now() -> str:
        snapshot.key.cache_clear()
        return snapshot.key()

    try:
        before = key_now()
        assert key_now() == before
        aliases = package / "data" / "substances.yaml"
        aliases.write_text(aliases.read_text(encoding="utf-8") + "\n# a new street name\n")
        assert key_now() != before
    finally:
        snapshot.key.cache_clear()


def test_a_snapshot_others_could_have_written_is_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unpickling runs code: a planted snapshot in a folder others can write must be ignored.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("RISKSET_CACHE_DIR", str(shared))
    planted = shared / f"numbers-{snapshot.key()}.pickle"
    planted.write_bytes(pickle.dumps([666]))
    assert snapshot.cached("numbers", lambda: [1, 2, 3]) == [1, 2, 3]
