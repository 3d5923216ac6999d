"""Faults a program will meet: the database going away and coming back, a read-only or full
disk, a migration killed half-way, and password guessing at the sign-in form.

Each test checks what a person would see (the page, the JSON, the command's message) and that
the records are whole afterwards. PostgreSQL faults go through a TCP relay in this file that a
test cuts and restores; the disk faults use a read-only bind mount and a tiny tmpfs when the
tests run as root (as CI does), and chmod or SQLite's page limit otherwise. All data is
synthetic.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, event, inspect, make_url, text
from typer.testing import CliRunner

from riskset import records as records_module
from riskset import records_web
from riskset.cli import app as cli_app
from riskset.login_limit import LoginLimiter, LoginLimitError, limiter_from_environment
from riskset.records import Records, UserInfo, head_revision
from tests.test_records import PASSWORD, PG_URL, REPO, _assessment, db_url
from tests.test_records_web import _CSRF, Browser

__all__ = ["db_url"]  # the backend fixture, shared with test_records.py

ENCOUNTER = {"site": "North", "supplies": {"naloxone": 2}, "referrals": ["housing"]}
# Every supply and referral: many rows per encounter, so a disk fills in few requests.
BULKY = {
    "site": "North",
    "supplies": dict.fromkeys(records_module.SUPPLY_KINDS, 9999),
    "referrals": list(records_module.REFERRAL_KINDS),
}
NOTHING_SAVED = "so nothing was saved"


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


class Relay:
    """A TCP relay to PostgreSQL that a test can cut (every connection closed, nobody
    listening) and restore on the same port, as a server restart or a network drop would."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> Relay:
        listener = socket.create_server(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)  # shutdown() wakes the thread blocked in accept()
        with self._lock:
            open_sockets, self._sockets = self._sockets, set()
        for sock in open_sockets:
            _close(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                if self._listener is not listener:
                    return
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def relay() -> Iterator[Relay]:
    server = make_url(PG_URL)
    relay = Relay((server.host or "127.0.0.1", server.port or 5432)).start()
    try:
        yield relay
    finally:
        relay.cut()


def _through(relay: Relay, url: str) -> str:
    return make_url(url).set(host="127.0.0.1", port=relay.port).render_as_string(False)


def _web(records: Records, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    monkeypatch.setenv("RISKSET_SECRET_KEY", "test-only secret key")
    app = FastAPI()
    app.include_router(records_web.router)
    app.dependency_overrides[records_web.get_records] = lambda: records
    limiter = LoginLimiter()  # its own: other tests' sign-ins do not count here
    app.dependency_overrides[records_web.get_login_limiter] = lambda: limiter
    return app


def _worker(records: Records) -> UserInfo:
    # One account (each costs a deliberately slow password hash): worker.north at North.
    return records.add_user("worker.north", PASSWORD, "worker", ["North"])


def _save(browser: Browser, entry: dict[str, Any] = ENCOUNTER) -> Any:
    return browser.client.post(
        "/records/api/encounters", json=entry, headers={"X-CSRF-Token": browser.csrf}
    )


def _mine(browser: Browser) -> Any:
    return browser.client.get("/records/api/encounters/mine")


def _on_statement(records: Records, pattern: str, action: Callable[[], None]) -> None:
    """Run ``action`` once, just before the first SQL statement matching ``pattern``."""
    done: list[bool] = []

    @event.listens_for(records.engine, "before_cursor_execute")
    def fire(*args: Any) -> None:
        if not done and re.search(pattern, args[2], re.IGNORECASE):
            done.append(True)
            action()


def _integrity(path: Path) -> str:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("PRAGMA integrity_check").scalar())
    finally:
        engine.dispose()


ADMIN_LOG: list[str] = []


class _AdminLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        ADMIN_LOG.append(record.getMessage())


@pytest.fixture(autouse=True)
def admin_log() -> Iterator[None]:
    """What the server logs for the admin: the technical detail pages must not show."""
    handler = _AdminLog()
    logger = logging.getLogger(records_web.__name__)
    logger.addHandler(handler)
    ADMIN_LOG.clear()
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _told_admin(words: str, page: str) -> bool:
    """The technical detail is in the server log, and not on the page anyone can read."""
    return any(words in line for line in ADMIN_LOG) and words not in page


def _assert_unavailable_json(response: Any, *words: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "30"
    detail = response.json()["detail"]
    assert "The records database cannot be used right now" in detail
    for word in words:
        assert word in detail or _told_admin(word, detail), (detail, ADMIN_LOG)


# --------------------------------------------------------------------------------------
# The database goes away in the middle of use, and comes back
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_going_away_mid_request_is_a_503_and_comes_back_by_itself(
    db_url: str, relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Records(_through(relay, db_url)) as records:
        _worker(records)
        worker = Browser(_web(records, monkeypatch)).sign_in("worker.north")
        assert _save(worker).status_code == 201
        # The server vanishes between the request's first statement and its INSERT.
        _on_statement(records, r"^INSERT INTO encounters\b", relay.cut)
        cut = _save(worker)
        _assert_unavailable_json(cut, NOTHING_SAVED, "Try again in a minute", "PostgreSQL")
        page = worker.post("/records/new", {"site": "North", "supply_naloxone": "1"})
        assert page.status_code == 503
        assert "The records are unavailable" in page.text and NOTHING_SAVED in page.text
        assert _told_admin("cannot use the records database", page.text)
        _assert_unavailable_json(_mine(worker))

        relay.start()  # the server is back: no restart of riskset
        assert len(_mine(worker).json()) == 1  # the cut request saved nothing
        assert _save(worker).status_code == 201
        assert len(_mine(worker).json()) == 2


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_lost_during_commit_says_it_may_have_been_saved(
    db_url: str, relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Records(_through(relay, db_url)) as records:
        _worker(records)
        worker = Browser(_web(records, monkeypatch)).sign_in("worker.north")
        armed: list[bool] = []

        @event.listens_for(records.engine, "commit")
        def cut_before_commit(_conn: Any) -> None:
            if armed:
                armed.clear()
                relay.cut()

        _on_statement(records, r"^INSERT INTO encounters\b", lambda: armed.append(True))
        response = _save(worker)
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert "may or may not have been saved" in detail and NOTHING_SAVED not in detail
        relay.start()
        assert _mine(worker).status_code == 200  # and the person can look, as told


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_riskset_started_while_postgresql_is_down_serves_once_it_is_up(
    db_url: str, relay: Relay, data_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RISKSET_DATABASE_URL", _through(relay, db_url))
    relay.cut()
    browser = TestClient(_default_app(), follow_redirects=False)
    page = browser.get("/records/login")
    assert page.status_code == 503 and "The records database cannot be used right now" in page.text
    assert _told_admin("Connection refused", page.text)
    relay.start()
    assert browser.get("/records/login").status_code == 200  # no restart: opened on this try


def _default_app() -> FastAPI:
    """The records as the main app mounts them: the default database and throttle."""
    app = FastAPI()
    app.include_router(records_web.router)
    return app


def test_sqlite_folder_moved_away_mid_request_is_a_503_and_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, away = tmp_path / "data", tmp_path / "elsewhere"
    folder.mkdir()
    with Records(f"sqlite:///{folder / 'records.sqlite3'}") as records:
        _worker(records)
        worker = Browser(_web(records, monkeypatch)).sign_in("worker.north")
        assert _save(worker).status_code == 201
        # The folder goes (an unmounted disk, a careless mv) after the request has read the
        # account and before it writes.
        _on_statement(records, r"FROM users", lambda: folder.rename(away))
        _assert_unavailable_json(_save(worker), NOTHING_SAVED, f"its folder {folder} is not there")
        assert not folder.exists()
        _assert_unavailable_json(_mine(worker), "unable to open database file", "disk not mounted")
        away.rename(folder)
        assert len(_mine(worker).json()) == 1
        assert _save(worker).status_code == 201
        assert len(_mine(worker).json()) == 2
    assert _integrity(folder / "records.sqlite3") == "ok"


def test_a_deleted_sqlite_file_is_not_replaced_by_an_empty_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "records.sqlite3"
    with Records(f"sqlite:///{path}") as records:
        _worker(records)
        worker = Browser(_web(records, monkeypatch)).sign_in("worker.north")
        assert _save(worker).status_code == 201
        backup = records.backup(tmp_path / "backup.sqlite3", actor="test")
        assert _save(worker).status_code == 201
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        _assert_unavailable_json(_save(worker), NOTHING_SAVED, "restore it from a backup")
        assert not path.exists()  # no empty database that would look like lost records
        shutil.copy(backup, path)  # the admin restores last night's backup
        assert len(_mine(worker).json()) == 1  # riskset follows the restored file
        assert _save(worker).status_code == 201


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_cli_says_clearly_when_the_database_cannot_be_reached(
    backend: str, tmp_path: Path
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'unmounted' / 'records.sqlite3'}"
        expected = "is not there (moved away, or its disk not mounted)"
    else:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/test"
        expected = "check that the PostgreSQL server is running"
    env = {k: v for k, v in os.environ.items() if k != "RISKSET_DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "riskset", "records", "list", "--database", url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("riskset: cannot use the records database"), done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------
# Read-only and full disks
# --------------------------------------------------------------------------------------


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` read-only in a way that holds for root too (a read-only bind mount);
    other accounts get chmod, which is what stops them."""
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)
        return
    if not _mount("--bind", str(folder), str(folder)):
        pytest.skip("cannot bind-mount here (root without CAP_SYS_ADMIN)")
    try:
        assert _mount("-o", "remount,bind,ro", str(folder)), "cannot remount read-only"
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@contextmanager
def _small_disk(folder: Path, size: str) -> Iterator[None]:
    folder.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
        pytest.skip("mounting a small tmpfs needs root with CAP_SYS_ADMIN; see the page-limit test")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The default data folder (no RISKSET_DATABASE_URL, no RISKSET_SECRET_KEY)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("RISKSET_DATABASE_URL", raising=False)
    monkeypatch.delenv("RISKSET_SECRET_KEY", raising=False)
    folder = tmp_path / "xdg" / "riskset"
    folder.mkdir(parents=True)
    records_web._default_records.cache_clear()
    yield folder
    if records_web._default_records.cache_info().currsize:  # opened by the test: close it
        records_web._default_records().close()
    records_web._default_records.cache_clear()


def test_a_read_only_data_folder_is_a_clear_error_in_the_browser_and_the_cli(
    data_home: Path,
) -> None:
    browser = TestClient(_default_app(), follow_redirects=False)
    with _read_only(data_home):
        page = browser.get("/records/login")
        assert page.status_code == 503 and "The records are unavailable" in page.text
        assert "Try again in a minute" in page.text
        where = data_home / "riskset.sqlite3"
        assert _told_admin(f"cannot create the records database {where}", page.text)
        assert _told_admin("make its folder writable", page.text) and "Traceback" not in page.text
        result = CliRunner().invoke(cli_app, ["users", "list"])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
        assert "riskset: cannot create the records database" in result.output
    # Writable again: the next request opens the records, with no restart.
    assert browser.get("/records/login").status_code == 200
    assert (data_home / "riskset.sqlite3").exists() and (data_home / "secret_key").exists()


def test_a_database_on_a_read_only_disk_refuses_writes_and_keeps_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "records.sqlite3"
    with Records(f"sqlite:///{path}") as records:
        _worker(records)
        worker = Browser(_web(records, monkeypatch)).sign_in("worker.north")
        assert _save(worker).status_code == 201
        records.engine.dispose()  # as after a restart: no connection opened before the fault
        with _read_only(folder):
            _assert_unavailable_json(_save(worker), NOTHING_SAVED, f"{folder} is read-only")
        assert len(_mine(worker).json()) == 1
        assert _save(worker).status_code == 201  # writable again, without a restart
    assert _integrity(path) == "ok"


def _fill_until_full(worker: Browser, limit: int = 400) -> int:
    """Save encounters until the database refuses one as full; returns how many it took."""
    for saved in range(limit):
        response = _save(worker, BULKY)
        if response.status_code != 201:
            assert response.status_code == 507, response.text
            return saved
    raise AssertionError(f"{limit} encounters fitted: the disk never filled")


def _assert_full_answers(worker: Browser) -> None:
    refused = _save(worker)
    assert refused.status_code == 507
    detail = refused.json()["detail"]
    assert detail.startswith("The records database is full, so nothing was saved.")
    assert "What was saved before is safe" in detail and _told_admin("free space", detail)
    page = worker.post("/records/new", {"site": "North", "supply_naloxone": "1"})
    assert page.status_code == 507 and "The records database is full" in page.text


def test_a_full_disk_is_a_clear_507_and_keeps_what_was_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmp_path / "disk"
    with _small_disk(disk, "1m"):
        path = disk / "records.sqlite3"
        with Records(f"sqlite:///{path}") as records:
            _worker(records)
            worker = Browser(_web(records, monkeypatch)).sign_in("worker.north")
            filler = disk / "filler"
            _fill_disk(filler, keep_free=48 * 1024)
            saved = _fill_until_full(worker)
            assert saved >= 1  # the 48 KiB left took some before the disk was full
            _assert_full_answers(worker)
            assert len(_mine(worker).json()) == saved  # reading still works, nothing lost
            filler.unlink()
            assert _save(worker).status_code == 201  # room again: riskset carries on
            assert len(_mine(worker).json()) == saved + 1
        assert _integrity(path) == "ok"


def _fill_disk(filler: Path, keep_free: int) -> None:
    free = shutil.disk_usage(filler.parent).free
    with filler.open("wb") as out:
        out.write(b"\0" * max(0, free - keep_free))


def test_a_database_at_its_size_limit_is_a_clear_507_and_keeps_what_was_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "records.sqlite3"
    with Records(f"sqlite:///{path}") as records:
        _worker(records)
        worker = Browser(_web(records, monkeypatch)).sign_in("worker.north")
        with records.engine.connect() as conn:
            pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar() or 0)
        limit = {"pages": pages + 1}

        @event.listens_for(records.engine, "connect")
        def cap(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute(f"PRAGMA max_page_count = {limit['pages']}")

        records.engine.dispose()  # every connection from here on has the cap
        saved = _fill_until_full(worker)
        assert saved >= 1
        _assert_full_answers(worker)
        assert len(_mine(worker).json()) == saved
        limit["pages"] = 1_000_000
        records.engine.dispose()
        assert _save(worker).status_code == 201
    assert _integrity(path) == "ok"


def test_a_sign_in_key_that_cannot_be_written_is_a_clear_503(
    data_home: Path, tmp_path: Path
) -> None:
    app = _default_app()
    with Records(f"sqlite:///{tmp_path / 'records.sqlite3'}") as records:
        app.dependency_overrides[records_web.get_records] = lambda: records
        with _read_only(data_home):
            page = TestClient(app).get("/records/login")
    assert page.status_code == 503 and "The records are unavailable" in page.text
    assert _told_admin(f"cannot keep the sign-in key in {data_home / 'secret_key'}", page.text)
    assert _told_admin("RISKSET_SECRET_KEY", page.text) and "set-cookie" not in page.headers


# --------------------------------------------------------------------------------------
# A migration killed half-way
# --------------------------------------------------------------------------------------

# A later revision of the kind that endangers data: SQLite rebuilds the encounters table (as
# batch mode does for most ALTERs), then every row is touched.
_REVISION_0002 = '''
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("encounters", recreate="always" if sqlite else "auto") as batch:
        batch.add_column(sa.Column("fault_check", sa.Integer(), nullable=True))
    op.execute("UPDATE encounters SET fault_check = 1")


def downgrade():
    with op.batch_alter_table("encounters") as batch:
        batch.drop_column("fault_check")
'''


@pytest.fixture
def revision_0002(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    migrations = tmp_path / "migrations"
    shutil.copytree(records_module.MIGRATIONS, migrations)
    (migrations / "versions" / "0002_fault_check.py").write_text(_REVISION_0002)
    monkeypatch.setattr(records_module, "MIGRATIONS", migrations)
    return "0002"


def _migrate_and_pause(url: str, pattern: str, report: Any) -> None:
    """In a forked child: open the records, and stop dead before a matching statement."""
    try:
        real_make_engine = records_module._make_engine

        def make_engine(parsed: Any) -> Any:
            engine = real_make_engine(parsed)

            @event.listens_for(engine, "before_cursor_execute")
            def pause(*args: Any) -> None:
                if re.search(pattern, args[2]):
                    report.send("paused")
                    threading.Event().wait(60)

            return engine

        records_module._make_engine = make_engine
        Records(url).close()
        report.send("finished without pausing")
    except BaseException:
        report.send(traceback.format_exc())


def _kill_mid_migration(url: str, pattern: str) -> None:
    context = multiprocessing.get_context("fork")  # riskset is imported already: fast
    ours, theirs = context.Pipe()
    child = context.Process(target=_migrate_and_pause, args=(url, pattern, theirs))
    child.start()
    try:
        assert ours.poll(20), "the migration never reached the statement"
        assert ours.recv() == "paused"
    finally:
        child.kill()  # SIGKILL: no cleanup, no rollback sent, as in a power cut
        child.join(10)


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if "alembic_version" not in inspect(conn).get_table_names():
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def _row_counts(records: Records) -> dict[str, int]:
    with records.engine.connect() as conn:
        return {
            table: int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar() or 0)
            for table in ("encounters", "encounter_codes", "encounter_supplies", "audit_log")
        }


def test_a_migration_killed_half_way_leaves_the_old_revision_and_finishes_next_time(
    db_url: str, request: pytest.FixtureRequest
) -> None:
    with Records(db_url) as records:
        worker = _worker(records)
        for n in range(1, 6):
            records.add_encounter(
                _assessment("substance:fentanyl", "route:injection"),
                site="North",
                worker=worker,
                supplies={"naloxone": n},
            )
        before = _row_counts(records)
    request.getfixturevalue("revision_0002")  # only now is there a newer revision
    kill_points = [r"^UPDATE encounters SET fault_check", r"^UPDATE alembic_version"]
    if db_url.startswith("sqlite"):
        kill_points.insert(0, r"^ALTER TABLE _alembic_tmp_encounters RENAME")  # after DROP
    for pattern in kill_points:
        _kill_mid_migration(db_url, pattern)
        assert _revision(db_url) == "0001", pattern
        with Records(db_url, migrate=False) as old:
            assert _row_counts(old) == before, pattern
            if old.backend == "sqlite":
                with old.engine.connect() as conn:
                    assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    with Records(db_url) as records:
        assert _revision(db_url) == head_revision() == "0002"
        assert _row_counts(records) == before  # no child row lost to a cascade
        kept = records.encounters(viewer="test")
        assert sorted(row.supplies["naloxone"] for row in kept) == [1, 2, 3, 4, 5]
        assert all("substance:fentanyl" in row.codes for row in kept)
        records.add_encounter(None, site="North", worker=worker, supplies={"syringes": 1})
        assert records.count() == 6


def test_a_new_database_killed_while_being_created_opens_next_time(db_url: str) -> None:
    _kill_mid_migration(db_url, r"^\s*CREATE TABLE encounters\b")
    assert _revision(db_url) is None
    with Records(db_url) as records:
        assert _revision(db_url) == head_revision()
        _worker(records)
        records.add_encounter(None, site="North", worker="worker.north", supplies={"naloxone": 1})
        assert records.count() == 1


# --------------------------------------------------------------------------------------
# Password guessing at the sign-in form
# --------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sign_in_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FastAPI, Clock]]:
    clock = Clock()
    limiter = LoginLimiter(clock=clock)
    with Records(f"sqlite:///{tmp_path / 'records.sqlite3'}") as records:
        _worker(records)
        records.add_user("sup.north", PASSWORD, "supervisor", ["North"])
        app = _web(records, monkeypatch)
        app.dependency_overrides[records_web.get_login_limiter] = lambda: limiter
        yield app, clock


def _try(app: FastAPI, username: str, password: str, address: str = "127.0.0.2") -> Any:
    client = TestClient(app, follow_redirects=False, client=(address, 50000))
    token = _CSRF.findall(client.get("/records/login").text)[0]
    return client.post(
        "/records/login",
        data={"username": username, "password": password, "csrf_token": token},
    )


def test_the_sixth_wrong_sign_in_is_refused_even_with_the_right_password(
    sign_in_app: tuple[FastAPI, Clock],
) -> None:
    app, clock = sign_in_app
    for _ in range(5):
        assert _try(app, "worker.north", "guess-guess").status_code == 400
    refused = _try(app, "worker.north", PASSWORD)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "300"
    assert "Too many wrong sign-ins" in refused.text and "Wait 5 minutes" in refused.text
    assert "set-cookie" not in refused.headers  # not signed in
    # Someone else, elsewhere, signs in as usual; the guessed account waits wherever it is.
    assert _try(app, "sup.north", PASSWORD, address="127.0.0.3").status_code == 303
    assert _try(app, "worker.north", PASSWORD, address="127.0.0.3").status_code == 429
    clock.now += 299
    assert _try(app, "worker.north", PASSWORD).headers["retry-after"] == "1"
    clock.now += 1
    assert _try(app, "worker.north", PASSWORD).status_code == 303


def test_a_successful_sign_in_wipes_the_accounts_wrong_tries(
    sign_in_app: tuple[FastAPI, Clock],
) -> None:
    app, _ = sign_in_app
    for _ in range(4):
        assert _try(app, "worker.north", "guess-guess").status_code == 400
    assert _try(app, "worker.north", PASSWORD).status_code == 303
    for _ in range(5):
        assert _try(app, "worker.north", "guess-guess").status_code == 400
    assert _try(app, "worker.north", "guess-guess").status_code == 429


def test_one_address_guessing_many_accounts_is_limited_and_the_limits_are_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RISKSET_LOGIN_FAILURES_PER_ADDRESS", "3")
    monkeypatch.setenv("RISKSET_LOGIN_WINDOW_SECONDS", "60")
    limiter = limiter_from_environment()
    assert (limiter.per_account, limiter.per_address, limiter.window_s) == (5, 3, 60)
    with Records(f"sqlite:///{tmp_path / 'records.sqlite3'}") as records:
        _worker(records)
        app = _web(records, monkeypatch)
        app.dependency_overrides[records_web.get_login_limiter] = lambda: limiter
        for name in ("admin", "sup.north", "worker.south"):
            assert _try(app, name, "guess-guess").status_code == 400
        refused = _try(app, "worker.north", PASSWORD)
        assert refused.status_code == 429 and "Wait 1 minute " in refused.text
        assert _try(app, "worker.north", PASSWORD, address="127.0.0.3").status_code == 303
    monkeypatch.setenv("RISKSET_LOGIN_WINDOW_SECONDS", "five minutes")
    with pytest.raises(LoginLimitError, match="RISKSET_LOGIN_WINDOW_SECONDS must be a whole"):
        limiter_from_environment()


def test_tries_sent_all_at_once_are_counted_before_any_is_answered() -> None:
    limiter = LoginLimiter(clock=Clock())
    started = [limiter.attempt("127.0.0.2", "worker.north") for _ in range(8)]
    assert started[:5] == [None] * 5 and started[5:] == [300] * 3
