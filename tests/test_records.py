"""The encounter records, run against SQLite (a temporary file) and PostgreSQL.

PostgreSQL tests use the local server (RISKSET_TEST_POSTGRES_URL, default
postgresql+psycopg://postgres@127.0.0.1:5432/test), each in a fresh schema dropped afterwards;
without a server they skip, saying how to start one. All data here is synthetic.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, func, inspect, make_url, select, text
from sqlalchemy.orm import Session

from riskset import records as records_module
from riskset.assessment import assess_findings
from riskset.models import Assessment, Finding
from riskset.records import (
    AccessDenied,
    Base,
    Encounter,
    EncounterCode,
    ProgramSettings,
    Records,
    RecordsError,
    RecordsInputError,
    RecordsUnavailable,
    UserInfo,
    head_revision,
)

PG_URL = os.environ.get(
    "RISKSET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PG_HOW_TO = (
    "start the local server (`pg_ctlcluster 15 main start` or `service postgresql start`; "
    "trust auth, user postgres, database `test`), or point RISKSET_TEST_POSTGRES_URL at one"
)
PASSWORD = "correct horse battery"
REPO = Path(__file__).resolve().parents[1]
_pg_error: list[str] = []


# --------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------


def _postgres_or_skip() -> None:
    if not _pg_error:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        try:
            with engine.connect():
                _pg_error.append("")
        except Exception as err:
            _pg_error.append(str(err).strip().splitlines()[0])
        finally:
            engine.dispose()
    if _pg_error[0]:
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL} ({_pg_error[0]}): {PG_HOW_TO}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL no other test uses: a new SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'records.sqlite3'}"
        return
    _postgres_or_skip()
    schema = f"riskset_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    # search_path in the URL itself, so subprocesses given the URL land in the schema too.
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def records(db_url: str) -> Iterator[Records]:
    with Records(db_url) as opened:
        yield opened


def _assessment(*codes: str, text: str = "") -> Assessment:
    return assess_findings([Finding(code=code) for code in codes], text=text)


def _staff(records: Records) -> dict[str, UserInfo]:
    return {
        "admin": records.add_user("admin", PASSWORD, "admin", ["North"]),
        "sup_north": records.add_user("sup.north", PASSWORD, "supervisor", ["North"]),
        "north": records.add_user("worker.north", PASSWORD, "worker", ["North"]),
        "south": records.add_user("worker.south", PASSWORD, "worker", ["South"]),
    }


def _table_counts(records: Records) -> dict[str, int]:
    with records.engine.connect() as conn:
        return {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in Base.metadata.sorted_tables
        }


def _all_text(records: Records) -> str:
    """Every value in every table, as one string, to search for what must not be there."""
    with records.engine.connect() as conn:
        return "\n".join(
            repr(tuple(row))
            for table in Base.metadata.sorted_tables
            for row in conn.execute(select(table))
        )


# --------------------------------------------------------------------------------------
# Schema and migrations
# --------------------------------------------------------------------------------------


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    with Records(db_url) as records, records.engine.connect() as conn:
        context = MigrationContext.configure(conn)
        assert context.get_current_revision() == head_revision()
        assert compare_metadata(context, Base.metadata) == []
        tables = set(inspect(conn).get_table_names())
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


def test_tables_come_from_the_migration_not_create_all(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("create_all must not be used")

    monkeypatch.setattr(Base.metadata, "create_all", refuse)
    with Records(db_url) as records:
        assert records.count() == 0
        assert records.migrate() == head_revision()  # a second run is a no-op


def test_many_processes_opening_a_new_database_at_once_all_succeed(db_url: str) -> None:
    script = _AWAIT_GO + "Records(sys.argv[1]).close()\n"
    procs = [_python(script, db_url) for _ in range(6)]
    _start_together(procs)
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 6, results
    with Records(db_url) as records:
        assert records.count() == 0


def test_default_database_is_a_private_file_in_the_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RISKSET_DATABASE_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with Records() as records:
        path = Path(records.engine.url.database or "")
        assert path == tmp_path / "data" / "riskset" / "riskset.sqlite3"
        assert path.stat().st_mode & 0o777 == 0o600
        with records.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    monkeypatch.setenv("RISKSET_DATABASE_URL", f"sqlite:///{tmp_path / 'env.sqlite3'}")
    with Records() as records:
        assert records.url.endswith("env.sqlite3")


# --------------------------------------------------------------------------------------
# What an encounter holds
# --------------------------------------------------------------------------------------


def test_an_encounter_keeps_codes_level_and_strategies_but_no_words(records: Records) -> None:
    staff = _staff(records)
    narrative = "Jessica Moreno, 555-201-7788, shot fentanyl alone at 14 Elm Street."
    assessment = _assessment("substance:fentanyl", "route:injection", "using_alone", text=narrative)
    encounter_id = records.add_encounter(
        assessment,
        site="North",
        worker=staff["north"],
        day=date(2024, 3, 5),
        supplies={"naloxone": 2, "syringes": 0},
        referrals=["moud", "moud"],
        follow_up=True,
        narrative=narrative,
    )
    [row] = records.my_encounters(staff["north"])
    assert row.id == encounter_id and row.day == date(2024, 3, 5) and row.site == "North"
    assert row.risk_level == assessment.overdose_risk.level.value
    assert set(row.codes) == assessment.present_codes()
    assert set(row.strategies) == {item.strategy for item in assessment.plan}
    assert row.supplies == {"naloxone": 2} and row.referrals == ("moud",) and row.follow_up
    assert row.narrative is None  # keep_narratives is off by default
    stored = _all_text(records)
    for identifying in ("Jessica", "Moreno", "555-201", "Elm"):  # not "555": timestamps
        assert identifying not in stored


def test_narratives_are_kept_only_when_enabled_and_only_scrubbed(records: Records) -> None:
    staff = _staff(records)
    narrative = "Jessica said to call her at 555-201-7788 or jess.m@example.org about the fent."
    records.add_encounter(None, site="North", worker=staff["north"], narrative=narrative)
    records.update_settings(ProgramSettings(keep_narratives=True), actor="test")
    records.add_encounter(None, site="North", worker=staff["north"], narrative=narrative)
    kept = [row.narrative for row in records.my_encounters(staff["north"])]
    assert kept[1] is None  # recorded while the setting was off
    assert kept[0] is not None and "fent" in kept[0]
    for identifying in ("Jessica", "555", "example.org"):
        assert identifying not in kept[0]
    # Turning the setting off takes the kept narratives with it.
    records.update_settings(ProgramSettings(keep_narratives=False), actor="test")
    assert [row.narrative for row in records.my_encounters(staff["north"])] == [None, None]


def test_a_narrative_that_cannot_be_scrubbed_is_never_stored(
    records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    staff = _staff(records)
    records.update_settings(ProgramSettings(keep_narratives=True), actor="test")

    def broken(text: str) -> None:
        raise RuntimeError("scrubber unavailable")

    monkeypatch.setattr("riskset.scrub.scrub", broken)
    with pytest.raises(RecordsError, match="could not be scrubbed"):
        records.add_encounter(None, site="North", worker=staff["north"], narrative="Jo, 555-0100")
    assert records.count() == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"supplies": {"Jessica's kit": 1}}, "unknown supply"),
        ({"supplies": {"naloxone": -1}}, "whole number"),
        ({"referrals": ["call Jessica"]}, "unknown referral"),
        ({"day": date.today() + timedelta(days=5)}, "in the future"),
        ({"site": "Nowhere"}, "no site"),
        ({"worker": "nobody"}, "no active account"),
    ],
)
def test_free_text_and_bad_values_are_refused(
    records: Records, change: dict[str, object], message: str
) -> None:
    staff = _staff(records)
    arguments: dict[str, object] = {"site": "North", "worker": staff["north"]} | change
    with pytest.raises(RecordsInputError, match=message):
        records.add_encounter(None, **arguments)  # type: ignore[arg-type]
    assert records.count() == 0


def test_an_assessment_with_a_made_up_code_is_refused(records: Records) -> None:
    staff = _staff(records)
    forged = _assessment("substance:heroin").model_copy(
        update={"findings": [Finding(code="Jessica Moreno")]}
    )
    with pytest.raises(RecordsInputError, match="unknown code"):
        records.add_encounter(forged, site="North", worker=staff["north"])
    assert records.count() == 0


# --------------------------------------------------------------------------------------
# Who sees what
# --------------------------------------------------------------------------------------


def test_a_worker_cannot_read_another_sites_records(records: Records) -> None:
    staff = _staff(records)
    records.add_encounter(None, site="North", worker=staff["north"], supplies={"naloxone": 1})
    records.add_encounter(None, site="South", worker=staff["south"], supplies={"naloxone": 5})
    today = date.today()

    assert [row.site for row in records.my_encounters(staff["north"])] == ["North"]
    assert [row.site for row in records.my_encounters(staff["south"])] == ["South"]
    with pytest.raises(AccessDenied):
        records.report(viewer=staff["north"], date_from=today, date_to=today)
    with pytest.raises(AccessDenied):
        records.encounters(viewer=staff["north"], site="South")
    with pytest.raises(AccessDenied):
        records.export_csv(io.StringIO(), viewer=staff["north"], date_from=today, date_to=today)
    with pytest.raises(AccessDenied):
        records.add_encounter(None, site="South", worker=staff["north"])
    # A supervisor sees their own site, and only that.
    with pytest.raises(AccessDenied):
        records.report(viewer=staff["sup_north"], date_from=today, date_to=today, site="South")
    own = records.report(viewer=staff["sup_north"], date_from=today, date_to=today)
    assert own.sites == ("North",) and own.total == 1
    assert records.report(viewer=staff["admin"], date_from=today, date_to=today).total == 2
    # Moved off a site, a worker no longer sees what they recorded there.
    records.set_user_sites("worker.north", ["South"], actor="test")
    moved = records.user(staff["north"].id)
    assert moved is not None and records.my_encounters(moved) == []


# --------------------------------------------------------------------------------------
# Reports, export, audit
# --------------------------------------------------------------------------------------


def _seed_report(records: Records, staff: dict[str, UserInfo]) -> None:
    monday = date(2024, 1, 1)  # ISO week 2024-W01
    fentanyl = _assessment("substance:fentanyl", "route:injection")
    pills = _assessment("substance:opioid_pills", "substance:alcohol")
    add = records.add_encounter
    add(
        fentanyl,
        site="North",
        worker=staff["north"],
        day=monday,
        supplies={"naloxone": 2},
        referrals=["moud"],
        follow_up=True,
    )
    add(
        fentanyl,
        site="North",
        worker=staff["north"],
        day=monday + timedelta(days=6),
        supplies={"naloxone": 1, "syringes": 10},
    )
    add(
        pills,
        site="North",
        worker=staff["north"],
        day=monday + timedelta(days=14),
        referrals=["housing", "medical"],
    )
    add(
        None,
        site="North",
        worker=staff["north"],
        day=monday + timedelta(days=15),
        supplies={"test_strips": 4},
    )
    add(fentanyl, site="South", worker=staff["south"], day=monday, supplies={"naloxone": 9})
    add(fentanyl, site="North", worker=staff["north"], day=monday + timedelta(days=40))


def test_report_counts_by_week_level_substance_strategy_supplies(records: Records) -> None:
    staff = _staff(records)
    _seed_report(records, staff)
    report = records.report(
        viewer=staff["sup_north"], date_from=date(2024, 1, 1), date_to=date(2024, 1, 21)
    )
    assert report.total == 4 and report.follow_ups == 1 and report.sites == ("North",)
    assert [(c.key, c.count) for c in report.per_week] == [
        ("2024-W01", 2),
        ("2024-W02", 0),
        ("2024-W03", 2),
    ]
    fentanyl_level = _assessment("substance:fentanyl", "route:injection").overdose_risk.level
    levels = {c.key: c.count for c in report.by_level}
    assert levels[fentanyl_level.value] >= 2 and levels["not_assessed"] == 1
    assert sum(levels.values()) == 4
    assert {c.key: c.count for c in report.by_substance} == {
        "substance:fentanyl": 2,
        "substance:opioid_pills": 1,
        "substance:alcohol": 1,
    }
    assert report.by_substance[0].label == "Fentanyl"
    assert {c.key: c.count for c in report.supplies} == {
        "naloxone": 3,
        "syringes": 10,
        "test_strips": 4,
    }
    assert {c.key: c.count for c in report.referrals} == {"moud": 1, "housing": 1, "medical": 1}
    assert report.by_strategy and all(c.count <= 3 for c in report.by_strategy)
    # The terminal operator may ask for one site, or all.
    everything = records.report(
        viewer="cli:test", date_from=date(2024, 1, 1), date_to=date(2024, 12, 31)
    )
    assert everything.total == 6
    south = records.report(
        viewer="cli:test", date_from=date(2024, 1, 1), date_to=date(2024, 12, 31), site="South"
    )
    assert south.total == 1 and {c.key: c.count for c in south.supplies} == {"naloxone": 9}


def test_csv_export_holds_no_worker_and_no_narrative_and_is_audited(records: Records) -> None:
    staff = _staff(records)
    records.update_settings(ProgramSettings(keep_narratives=True), actor="test")
    _seed_report(records, staff)
    records.add_encounter(
        None,
        site="North",
        worker=staff["north"],
        day=date(2024, 1, 2),
        narrative="used fent by the river",
    )
    out = io.StringIO()
    written = records.export_csv(
        out, viewer=staff["sup_north"], date_from=date(2024, 1, 1), date_to=date(2024, 1, 31)
    )
    lines = out.getvalue().splitlines()
    assert written == 5 and len(lines) == 6
    assert lines[0].startswith("day,iso_week,site,risk_level,substances")
    assert "worker" not in out.getvalue() and "river" not in out.getvalue()
    assert lines[1].startswith("2024-01-01,2024-W01,North,")
    actions = [(entry.actor, entry.action) for entry in records.audit_log()]
    assert ("sup.north", "export_csv") in actions


def test_viewing_a_report_writes_the_audit_log(records: Records) -> None:
    staff = _staff(records)
    records.report(viewer=staff["sup_north"], date_from=date(2024, 1, 1), date_to=date(2024, 1, 31))
    [entry] = [e for e in records.audit_log() if e.action == "view_report"]
    assert entry.actor == "sup.north" and "North" in entry.detail and "2024-01-01" in entry.detail
    assert entry.at.tzinfo is not None


# --------------------------------------------------------------------------------------
# Retention and backup
# --------------------------------------------------------------------------------------


def test_purge_removes_only_rows_older_than_the_cutoff(records: Records) -> None:
    staff = _staff(records)
    today = date(2024, 6, 30)
    assessment = _assessment("substance:heroin")
    for age in (31, 30, 29, 0):
        records.add_encounter(
            assessment,
            site="North",
            worker=staff["north"],
            day=today - timedelta(days=age),
            supplies={"naloxone": 1},
        )
    assert records.purge(30, actor="test", today=today) == 1
    remaining = sorted((today - row.day).days for row in records.my_encounters(staff["north"]))
    assert remaining == [0, 29, 30]
    counts = _table_counts(records)
    assert counts["encounters"] == 3 and counts["encounter_supplies"] == 3
    with Session(records.engine) as s:  # the purged encounter's codes went with it
        orphans = s.scalar(
            select(func.count())
            .select_from(EncounterCode)
            .where(EncounterCode.encounter_id.not_in(select(Encounter.id)))
        )
    assert orphans == 0
    with pytest.raises(RecordsInputError, match="no retention period"):
        records.purge(actor="test", today=today)
    records.update_settings(ProgramSettings(retention_days=10), actor="test")
    assert records.purge(actor="test", today=today) == 2


def test_backup_is_a_database_with_the_same_counts(records: Records, tmp_path: Path) -> None:
    staff = _staff(records)
    _seed_report(records, staff)
    target = tmp_path / "backups" / "riskset-backup.sqlite3"
    target.parent.mkdir()
    if records.backend == "postgresql":
        with pytest.raises(RecordsError, match="pg_dump"):
            records.backup(target, actor="test")
        return
    records.backup(target, actor="test")
    assert target.stat().st_mode & 0o777 == 0o600
    before = _table_counts(records)
    with Records(f"sqlite:///{target}") as copy:
        after = _table_counts(copy)
        assert copy.authenticate("worker.north", PASSWORD) is not None
    before["audit_log"] -= 1  # the backup's own audit entry, written after the copy
    assert after == before
    with pytest.raises(RecordsInputError, match="already exists"):
        records.backup(target, actor="test")


# --------------------------------------------------------------------------------------
# Accounts
# --------------------------------------------------------------------------------------


def test_accounts_hash_passwords_and_authenticate(records: Records) -> None:
    user = records.add_user("Outreach.1", PASSWORD, "worker", ["North", "South"])
    assert user.username == "outreach.1" and user.sites == ("North", "South")
    with records.engine.connect() as conn:
        stored = conn.execute(text("SELECT password_hash FROM users")).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert records.authenticate("OUTREACH.1", PASSWORD) == user
    assert records.authenticate("outreach.1", "wrong password") is None
    assert records.authenticate("nobody", PASSWORD) is None
    with pytest.raises(RecordsInputError, match="already an account"):
        records.add_user("outreach.1", PASSWORD)
    with pytest.raises(RecordsInputError, match="at least"):
        records.add_user("short", "2short")
    with pytest.raises(RecordsInputError, match="unknown role"):
        records.add_user("boss", PASSWORD, "owner")
    records.set_active("outreach.1", False, actor="test")
    assert records.authenticate("outreach.1", PASSWORD) is None
    records.set_active("outreach.1", True, actor="test")
    records.set_password("outreach.1", "a new passphrase", actor="test")
    changed = records.authenticate("outreach.1", "a new passphrase")
    assert changed is not None and changed.session_epoch > user.session_epoch
    failed = [e.detail for e in records.audit_log() if e.action == "login_failed"]
    assert "(unknown account)" in failed and "nobody" not in failed


# --------------------------------------------------------------------------------------
# A dead or unreachable database
# --------------------------------------------------------------------------------------


def _assert_clear(err: RecordsUnavailable, *words: str) -> None:
    message = str(err)
    assert "\n" not in message and "Traceback" not in message
    assert err.__cause__ is None and err.__suppress_context__  # no driver traceback attached
    for word in words:
        assert word in message


def test_a_missing_folder_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RecordsUnavailable) as caught:
        Records(f"sqlite:///{tmp_path / 'no' / 'such' / 'folder' / 'r.sqlite3'}")
    _assert_clear(caught.value, "folder", "RISKSET_DATABASE_URL")


def test_a_damaged_file_gives_a_clear_error_even_after_opening(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    records = Records(f"sqlite:///{path}")
    records.engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"this is not a database " * 100)
    with pytest.raises(RecordsUnavailable) as caught:
        records.count()
    _assert_clear(caught.value, str(path), "backup")


def test_an_unreachable_postgresql_gives_a_clear_error() -> None:
    started = time.monotonic()
    with pytest.raises(RecordsUnavailable) as caught:
        Records("postgresql+psycopg://riskset:secret@127.0.0.1:1/riskset")
    _assert_clear(caught.value, "PostgreSQL server is running", "127.0.0.1:1")
    assert "secret" not in str(caught.value)  # the password never reaches a screen or log
    assert time.monotonic() - started < 30


def test_a_missing_postgresql_database_gives_a_clear_error() -> None:
    _postgres_or_skip()
    missing = make_url(PG_URL).set(database=f"riskset_missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(RecordsUnavailable) as caught:
        Records(missing.render_as_string(hide_password=False))
    _assert_clear(caught.value, "does not exist")


def test_urls_riskset_cannot_use_are_refused_clearly() -> None:
    with pytest.raises(RecordsUnavailable, match="not a database URL"):
        Records("records.db")
    with pytest.raises(RecordsUnavailable, match="SQLite or PostgreSQL"):
        Records("mysql://someone@localhost/records")


# --------------------------------------------------------------------------------------
# Crashes and concurrency (real processes)
# --------------------------------------------------------------------------------------

# Children import first (riskset's import is slow), then all start at the parent's word.
_AWAIT_GO = """
import sys
from riskset.records import Records
print("ready", flush=True)
sys.stdin.readline()
"""
_WRITER_SETUP = """
import sys
from datetime import date
from riskset.assessment import assess_findings
from riskset.models import Finding
from riskset.records import Records
records = Records(sys.argv[1])
assessment = assess_findings([Finding(code="substance:fentanyl"), Finding(code="route:smoking")])
def add():
    return records.add_encounter(
        assessment, site="North", worker=sys.argv[2], supplies={"naloxone": 1},
        referrals=["moud"], follow_up=True,
    )
"""


def _python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _start_together(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        _read_until(proc, "ready")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def _read_until(proc: subprocess.Popen[str], marker: str) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith(marker):
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"writer ended early: {proc.stderr.read() if proc.stderr else ''}")
        lines.append(line.strip())
    return lines


def _check_integrity(records: Records) -> None:
    if records.backend == "sqlite":
        with records.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"


def test_a_process_killed_inside_a_write_loses_no_committed_record(records: Records) -> None:
    records.add_user("writer", PASSWORD, "worker", ["North"])
    committed = 25
    script = (
        _WRITER_SETUP
        + f"""
for i in range({committed}):
    add()
    print("committed", i + 1, flush=True)
from sqlalchemy.orm import Session
from riskset.records import Encounter
# The next write: a transaction that grows until the process is killed inside it.
with Session(records.engine.execution_options(riskset_begin="IMMEDIATE")) as s, s.begin():
    site, worker = records._site_named(s, "North"), records._account_named(s, "writer")
    for n in range(10**9):
        s.add(Encounter(day=date.today(), site=site, worker=worker, follow_up=False))
        s.flush()
        if n == 50:
            print("inside the transaction", flush=True)
"""
    )
    proc = _python(script, _raw_url(records), "writer")
    try:
        _read_until(proc, "inside the transaction")
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with Records(_raw_url(records)) as reopened:
        assert reopened.count() == committed
        _check_integrity(reopened)


def test_a_process_killed_at_any_moment_keeps_every_acknowledged_record(
    records: Records,
) -> None:
    records.add_user("writer", PASSWORD, "worker", ["North"])
    script = (
        _WRITER_SETUP
        + """
n = 0
while True:
    add()
    n += 1
    print("committed", n, flush=True)
"""
    )
    proc = _python(script, _raw_url(records), "writer")
    try:
        _read_until(proc, "committed 40")
        time.sleep(random.uniform(0.0, 0.05))  # land anywhere: mid-insert, mid-commit, between
    finally:
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    acknowledged = max([40, *(int(line.split()[1]) for line in out.split("\n") if line)])
    with Records(_raw_url(records)) as reopened:
        # The one in flight may or may not have committed; none acknowledged may be lost.
        assert acknowledged <= reopened.count() <= acknowledged + 1
        _check_integrity(reopened)


def _raw_url(records: Records) -> str:
    return records.engine.url.render_as_string(hide_password=False)


@pytest.mark.parametrize("how", ["processes", "threads"])
def test_ten_concurrent_writers_of_a_hundred_each_lose_none(records: Records, how: str) -> None:
    writers, each = 10, 100
    for w in range(writers):
        records.add_user(f"writer{w}", PASSWORD, "worker", ["North"])
    if how == "processes":
        script = (
            _WRITER_SETUP
            + _AWAIT_GO
            + f"""
for i in range({each}):
    add()
print("done", flush=True)
"""
        )
        procs = [_python(script, _raw_url(records), f"writer{w}") for w in range(writers)]
        _start_together(procs)
        started = time.monotonic()
        results = [proc.communicate(timeout=600) for proc in procs]
        assert [proc.returncode for proc in procs] == [0] * writers, results
    else:
        started = time.monotonic()
        _write_with_threads(records, writers, each)
    elapsed = time.monotonic() - started
    assert records.count() == writers * each
    with records.engine.connect() as conn:
        per_worker = conn.execute(
            text("SELECT worker_id, COUNT(*) FROM encounters GROUP BY worker_id")
        ).all()
    assert sorted(n for _, n in per_worker) == [each] * writers
    assert _table_counts(records)["encounter_supplies"] == writers * each
    _check_integrity(records)
    print(f"\n{records.backend} {how}: {writers * each} encounters in {elapsed:.1f}s")


def _write_with_threads(records: Records, writers: int, each: int) -> None:
    assessment = _assessment("substance:heroin", "route:injection")
    errors: list[BaseException] = []

    def write(worker: str) -> None:
        try:
            for _ in range(each):
                records.add_encounter(
                    assessment, site="North", worker=worker, supplies={"naloxone": 1}
                )
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=write, args=(f"writer{w}",)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_records_module_names_its_public_api() -> None:
    for name in records_module.__all__:
        assert hasattr(records_module, name), name
