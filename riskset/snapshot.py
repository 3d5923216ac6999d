"""A snapshot of what riskset builds from its data files, so that a new process starts fast.

Validating the knowledge base and compiling the reader's rules takes longer than reading a
thousand narratives, and a one-narrative ``riskset assess`` would pay for it every time. So the
built objects are pickled into the user's cache folder, under a key made of the data files,
riskset's own code and the versions of Python and pydantic: any change to one of them makes a
new key, and the snapshot is rebuilt. A snapshot that cannot be read or written is rebuilt in
memory, never an error: the cache only ever saves time.

``RISKSET_CACHE_DIR`` chooses the folder; ``RISKSET_CACHE_DIR=off`` turns the snapshot off.
"""

from __future__ import annotations

import hashlib
import os
import pickle  # nosec B403 # only for riskset's own snapshots, see _private
import stat
import sys
import tempfile
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TypeVar

import pydantic

T = TypeVar("T")

OFF = "off"


def folder() -> Path | None:
    """Where snapshots live, or None when they are turned off."""
    chosen = os.environ.get("RISKSET_CACHE_DIR")
    if chosen == OFF:
        return None
    if chosen:
        return Path(chosen)
    import platformdirs

    return Path(platformdirs.user_cache_dir("riskset"))


@cache
def key() -> str:
    """Changes whenever anything a snapshot was built from changes."""
    digest = hashlib.sha256()
    digest.update(f"{sys.version}|pydantic {pydantic.VERSION}".encode())
    package = resources.files("riskset")
    for part in sorted([*package.iterdir(), *package.joinpath("data").iterdir()], key=str):
        if part.name.endswith((".py", ".yaml", ".txt")):
            digest.update(part.name.encode())
            digest.update(part.read_bytes())
    return digest.hexdigest()[:16]


def cached(name: str, build: Callable[[], T]) -> T:
    """``build()``, or the snapshot of what it built last time with the same key."""
    where = folder()
    if where is None:
        return build()
    path = where / f"{name}-{key()}.pickle"
    try:
        if _private(path):
            # Only this user can have written it (checked just above), and whoever can run
            # code as this user needs no pickle to do so.
            return pickle.loads(path.read_bytes())  # type: ignore[no-any-return]  # nosec B301
    except Exception:  # nosec B110 # missing, stale or unreadable: build it again
        pass
    built = build()
    _write(path, built)
    return built


def _private(path: Path) -> bool:
    """Owned by this user, and neither it nor its folder writable by anyone else.

    Unpickling runs code, so a snapshot in a folder others can write to (RISKSET_CACHE_DIR set
    to a shared folder, say) is never read.
    """
    if not hasattr(os, "getuid"):
        return True  # Windows: the user's cache folder is private by its ACL
    for checked in (path, path.parent):
        info = checked.stat()
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


def _write(path: Path, value: object) -> None:
    partial: Path | None = None
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for old in path.parent.glob(f"{path.name.rsplit('-', 1)[0]}-*.pickle"):
            old.unlink(missing_ok=True)  # an older key's snapshot will never be read again
        # Write beside it and rename, so another process never reads half a snapshot.
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as out:
            partial = Path(out.name)
            pickle.dump(value, out, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, path)
    except Exception:  # a read-only or full disk only costs the next start its time
        if partial is not None:
            partial.unlink(missing_ok=True)
