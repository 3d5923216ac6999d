"""Anonymous encounter records: what a program did, counted, without who it was done for.

An encounter holds the day (never the time), the site, the worker's account, the finding codes,
the overdose risk level, the strategies offered, supplies given, referrals and a follow-up flag.
Nothing that names, locates or reaches a person is stored: codes, kinds and levels come from
fixed vocabularies, and the only free text (the narrative) is kept only when the program turns
``keep_narratives`` on, and then only after ``scrub()``.

Storage is SQLAlchemy 2 with Alembic migrations (``riskset/migrations``): SQLite in the user's
data folder by default, PostgreSQL when ``RISKSET_DATABASE_URL`` says ``postgresql+psycopg://``.
Any failure to reach or use the database surfaces as ``RecordsUnavailable`` with a message a
person can act on.

Public API: ``Records`` and the value types it returns (``UserInfo``, ``EncounterInfo``,
``Report``, ``Count``, ``ProgramSettings``, ``AuditRecord``); errors ``RecordsError``,
``RecordsUnavailable``, ``RecordsInputError``, ``AccessDenied``; vocabularies ``ROLES``,
``SUPPLY_KINDS``, ``REFERRAL_KINDS``.
``RecordsStorageFull`` (a ``RecordsUnavailable``) says the disk or the database is full.
"""

from __future__ import annotations

import csv
import getpass
import os
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Literal, TextIO, cast
from urllib.parse import quote

import platformdirs
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    create_engine,
    delete,
    event,
    exc,
    false,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.engine import URL, Connection, CursorResult, ExceptionContext, Result, make_url
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)
from sqlalchemy.sql.elements import ColumnElement

from .models import LEVEL_ORDER, Assessment

__all__ = [
    "REFERRAL_KINDS",
    "ROLES",
    "SUPPLY_KINDS",
    "AccessDenied",
    "AuditRecord",
    "Base",
    "Count",
    "EncounterInfo",
    "ProgramSettings",
    "Records",
    "RecordsError",
    "RecordsInputError",
    "RecordsStorageFull",
    "RecordsUnavailable",
    "Report",
    "Role",
    "UserInfo",
    "cli_actor",
    "code_label",
    "default_database_url",
    "head_revision",
    "iso_week",
]

ENV_URL = "RISKSET_DATABASE_URL"
SQLITE_FILE = "riskset.sqlite3"
# Long enough to ride out another process's write (a purge, a backup), short enough that a
# stuck lock turns into a message instead of a hung page.
BUSY_TIMEOUT_S = 30
PG_CONNECT_TIMEOUT_S = 5
# Arbitrary but fixed: every riskset process takes this advisory lock to migrate PostgreSQL.
PG_MIGRATION_LOCK = 0x7269736B

Role = Literal["worker", "supervisor", "admin"]
ROLES: tuple[Role, ...] = ("worker", "supervisor", "admin")
_RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES)}

# Fixed vocabularies keep free text (and so identifying text) out of every column but one.
SUPPLY_KINDS: dict[str, str] = {
    "naloxone": "Naloxone kits",
    "syringes": "Syringes",
    "test_strips": "Drug test strips",
    "pipes": "Pipes",
    "cookers": "Cookers",
    "snorting_kits": "Snorting kits",
    "sharps_containers": "Sharps containers",
    "wound_care": "Wound care kits",
    "condoms": "Condoms",
    "other": "Other supplies",
}
REFERRAL_KINDS: dict[str, str] = {
    "treatment": "Treatment",
    "moud": "Medication for opioid use disorder",
    "medical": "Medical care",
    "mental_health": "Mental health",
    "housing": "Housing",
    "testing": "HIV / hepatitis testing",
    "wound_care": "Wound care",
    "legal": "Legal help",
    "food": "Food",
    "other": "Other",
}
NOT_ASSESSED = "not_assessed"
MAX_NARRATIVE = 20_000
MAX_SUPPLY_COUNT = 10_000
MIN_PASSWORD = 8
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}")
_SITE_NAME = re.compile(r"[\w][\w .'&()/-]{0,79}")


# --------------------------------------------------------------------------------------
# Errors: each carries a message meant for the person who will read it
# --------------------------------------------------------------------------------------


class RecordsError(Exception):
    """Something the records layer could not do, said so a person can act on it."""


class RecordsUnavailable(RecordsError):
    """The database cannot be reached, opened or used."""

    def __init__(self, message: str, *, maybe_saved: bool = False) -> None:
        super().__init__(message)
        # True only when the connection broke during COMMIT: the server may have saved the
        # write before the answer was lost, so "nothing was saved" would be a guess.
        self.maybe_saved = maybe_saved


class RecordsStorageFull(RecordsUnavailable):
    """The disk (or the database's size limit) is full: nothing more can be written."""


class RecordsInputError(RecordsError, ValueError):
    """The request itself is wrong: an unknown site, a bad day, a weak password ..."""


class AccessDenied(RecordsError):
    """The account may not see or do this."""


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------

# Named constraints so the migration and the models agree on every name, on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Site(Base):
    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class UserAccount(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint("role IN ('worker', 'supervisor', 'admin')", name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Bumped on logout and password change: every session cookie signed before it stops working.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sites: Mapped[list[Site]] = relationship(secondary="user_sites", order_by=Site.name)


class UserSite(Base):
    __tablename__ = "user_sites"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    site_id: Mapped[int] = mapped_column(
        ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True
    )


class Encounter(Base):
    __tablename__ = "encounters"
    __table_args__ = (
        Index("ix_encounters_site_day", "site_id", "day"),
        Index("ix_encounters_worker_day", "worker_id", "day"),
        Index("ix_encounters_day", "day"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date] = mapped_column(Date)  # a day, never a time: times help re-identify
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    worker_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    risk_level: Mapped[str | None] = mapped_column(String(16))
    follow_up: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    narrative: Mapped[str | None] = mapped_column(Text)  # scrubbed, and only if kept at all
    knowledge_version: Mapped[str | None] = mapped_column(String(32))

    site: Mapped[Site] = relationship()
    worker: Mapped[UserAccount] = relationship()
    codes: Mapped[list[EncounterCode]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )
    strategies: Mapped[list[EncounterStrategy]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )
    supplies: Mapped[list[EncounterSupply]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )
    referrals: Mapped[list[EncounterReferral]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )


def _encounter_fk() -> Mapped[int]:
    # Children go with their encounter at the database level, so a purge is one DELETE.
    return mapped_column(ForeignKey("encounters.id", ondelete="CASCADE"), primary_key=True)


class EncounterCode(Base):
    __tablename__ = "encounter_codes"
    __table_args__ = (Index("ix_encounter_codes_code", "code"),)

    encounter_id: Mapped[int] = _encounter_fk()
    code: Mapped[str] = mapped_column(String(80), primary_key=True)


class EncounterStrategy(Base):
    __tablename__ = "encounter_strategies"

    encounter_id: Mapped[int] = _encounter_fk()
    strategy: Mapped[str] = mapped_column(String(80), primary_key=True)


class EncounterSupply(Base):
    __tablename__ = "encounter_supplies"
    __table_args__ = (CheckConstraint("count > 0", name="count_positive"),)

    encounter_id: Mapped[int] = _encounter_fk()
    kind: Mapped[str] = mapped_column(String(40), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)


class EncounterReferral(Base):
    __tablename__ = "encounter_referrals"

    encounter_id: Mapped[int] = _encounter_fk()
    kind: Mapped[str] = mapped_column(String(40), primary_key=True)


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Staff actions get a time; encounters never do, and the log never names an encounter.
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(80))
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    action: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str] = mapped_column(String(400), default="", server_default="")


class Setting(Base):
    __tablename__ = "program_settings"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    retention_days: Mapped[int | None] = mapped_column(Integer)
    keep_narratives: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


# --------------------------------------------------------------------------------------
# Values handed out (never ORM rows, so no session leaks past a call)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserInfo:
    id: int
    username: str
    role: Role
    sites: tuple[str, ...]
    active: bool = True
    session_epoch: int = 0

    def has_role(self, role: Role) -> bool:
        """Roles nest: a supervisor may do what a worker does, an admin what both do."""
        return _RANK[self.role] >= _RANK[role]


@dataclass(frozen=True)
class EncounterInfo:
    id: int
    day: date
    site: str
    worker: str
    risk_level: str | None
    codes: tuple[str, ...]
    strategies: tuple[str, ...]
    supplies: Mapping[str, int]
    referrals: tuple[str, ...]
    follow_up: bool
    narrative: str | None

    @property
    def substances(self) -> tuple[str, ...]:
        return tuple(c for c in self.codes if c.startswith("substance:"))


@dataclass(frozen=True)
class Count:
    """One bar of a chart, one row of a table."""

    key: str
    label: str
    count: int


@dataclass(frozen=True)
class Report:
    date_from: date
    date_to: date
    sites: tuple[str, ...]  # the sites covered, by name
    total: int
    follow_ups: int
    per_week: list[Count]
    by_level: list[Count]
    by_substance: list[Count]
    by_strategy: list[Count]
    supplies: list[Count]
    referrals: list[Count]

    def sections(self) -> list[tuple[str, list[Count]]]:
        return [
            ("Encounters per week", self.per_week),
            ("Overdose risk level", self.by_level),
            ("Substances", self.by_substance),
            ("Strategies offered", self.by_strategy),
            ("Supplies given", self.supplies),
            ("Referrals", self.referrals),
        ]


@dataclass(frozen=True)
class ProgramSettings:
    retention_days: int | None = None  # None: keep until someone purges by hand
    keep_narratives: bool = False


@dataclass(frozen=True)
class AuditRecord:
    at: datetime
    actor: str
    action: str
    detail: str


@dataclass
class _Scope:
    """The WHERE clauses of a report or export, and how to describe them in the audit log."""

    where: list[ColumnElement[bool]] = field(default_factory=list)
    sites: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------
# Database URL and engine
# --------------------------------------------------------------------------------------


def default_database_url() -> str:
    """RISKSET_DATABASE_URL, else a SQLite file in the user's data folder (made private)."""
    if env := os.environ.get(ENV_URL, "").strip():
        return env
    folder = platformdirs.user_data_path("riskset")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as err:
        raise RecordsUnavailable(
            f"cannot make the data folder {folder}: {err.strerror or err}; make it writable "
            f"for this account, or point {ENV_URL} at a database"
        ) from None
    return f"sqlite:///{folder / SQLITE_FILE}"


def cli_actor() -> str:
    """Who the audit log names for a command run at the terminal."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # containers may run as a uid with no passwd entry
        return "cli"


def _parse_url(raw: str) -> URL:
    try:
        url = make_url(raw)
    except exc.ArgumentError:
        raise RecordsUnavailable(
            f"{raw!r} is not a database URL: use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST:PORT/DATABASE"
        ) from None
    # psycopg (3) is the driver riskset ships with; plain postgresql:// would ask for psycopg2.
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise RecordsUnavailable(
            f"riskset keeps records in SQLite or PostgreSQL, not {url.get_backend_name()}"
        )
    return url


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL; None for memory and ``file:`` URI databases."""
    path = url.database
    if not path or path == ":memory:" or path.startswith("file:") or url.query.get("uri"):
        return None
    return Path(os.path.abspath(path))


def _prepare_sqlite_file(url: URL) -> None:
    """Create a new database file readable by its owner only (WAL files inherit the mode)."""
    target = _sqlite_file(url)
    if target is None:
        return
    if target.exists() or not target.parent.is_dir():
        return  # a missing folder is reported by the first connection, with a hint
    try:
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError as err:
        raise RecordsUnavailable(
            f"cannot create the records database {target}: {err.strerror or err}; make its "
            f"folder writable for this account, or point {ENV_URL} at another database"
        ) from None


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (see _sqlite_on_begin), so the driver must not.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # WAL: readers never block the writer and a crash mid-write leaves the file whole.
        cursor.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed encounter survives power loss too, not only a killed process.
        cursor.execute("PRAGMA synchronous = FULL")
    finally:
        cursor.close()


def _open_existing_file_only(engine: Engine, path: Path) -> None:
    """Open the file read-write but never create it (SQLite's mode=rw).

    Riskset makes the file itself, once, private (_prepare_sqlite_file). A file that is gone
    later (deleted, its disk not mounted) must be an error, not a new empty database that the
    next start would migrate and serve as if every record had been lost.
    """
    uri = f"file:{quote(str(path))}?mode=rw"

    def connect_to_existing(_dialect: Any, _record: Any, cargs: list[Any], cparams: Any) -> None:
        cargs[0] = uri
        cparams["uri"] = True

    event.listen(engine, "do_connect", connect_to_existing)


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _watch_sqlite_file(engine: Engine, path: Path) -> None:
    """Drop pooled connections whose file is no longer the one at ``path``.

    An open connection keeps its file even after the file is moved, deleted or replaced (a
    backup restored over it): writes through it would land in a file nobody will open again.
    Checking on every checkout (one stat) turns that into a reconnect, which either finds the
    database again or fails with a message.
    """

    def remember(_dbapi_connection: Any, record: Any) -> None:
        record.info["riskset_file"] = _file_identity(path)

    def check(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.info.get("riskset_file") != _file_identity(path):
            raise exc.InvalidatePoolError(f"{path} is no longer the file this connection has")

    event.listen(engine, "connect", remember)
    event.listen(engine, "checkout", check)


# A connection that met one of these keeps meeting it after the cause is gone (one opened
# while the folder was read-only stays read-only), so it is closed and the next use reopens.
_SQLITE_STUCK = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN})


def _drop_stuck_sqlite_connection(context: ExceptionContext) -> None:
    code = getattr(context.original_exception, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _SQLITE_STUCK:
        context.is_disconnect = True


def _sqlite_on_begin(connection: Any) -> None:
    # Writes take the write lock up front (BEGIN IMMEDIATE): a deferred transaction that reads
    # then writes can fail at once with "database is locked", whatever the busy timeout.
    mode = connection.get_execution_options().get("riskset_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def _make_engine(url: URL) -> Engine:
    try:
        if url.get_backend_name() == "sqlite":
            _prepare_sqlite_file(url)
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
            event.listen(engine, "handle_error", _drop_stuck_sqlite_connection)
            if (path := _sqlite_file(url)) is not None:
                _open_existing_file_only(engine, path)
                _watch_sqlite_file(engine, path)
            return engine
        return create_engine(
            url, pool_pre_ping=True, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S}
        )
    except (ImportError, exc.NoSuchModuleError):
        raise RecordsUnavailable(
            "PostgreSQL support needs the psycopg driver: pip install 'psycopg[binary]'"
        ) from None
    except exc.ArgumentError as err:
        raise RecordsUnavailable(f"unusable database URL: {err}") from None


def _first_line(err: BaseException) -> str:
    orig = getattr(err, "orig", None) or err
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


def _missing_or_read_only(path: Path | None) -> str | None:
    """What is wrong with the database's file or folder, when that can be seen from here."""
    if path is None:
        return None
    if not path.parent.is_dir():
        return (
            f"its folder {path.parent} is not there (moved away, or its disk not mounted); "
            f"put it back, or point {ENV_URL} at the database"
        )
    if not path.exists():
        return "the file is not there: put it back or restore it from a backup, or point " + (
            f"{ENV_URL} at the database"
        )
    # WAL needs to make files beside the database, so the folder must be writable too.
    for place in (path.parent, path):
        if not os.access(place, os.W_OK):
            return f"{place} is read-only (a read-only disk, or this account may not write there)"
    return None


def _is_storage_full(err: BaseException) -> bool:
    orig = getattr(err, "orig", None) or err
    # SQLITE_FULL comes from a full disk and from max_page_count alike; 53100 is PostgreSQL's
    # disk_full.
    return (
        getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or getattr(orig, "sqlstate", None) == "53100"
    )


def _sqlite_hint(message: str, path: Path | None) -> str:
    lower = message.lower()
    cannot_open_or_write = "unable to open" in lower or "readonly" in lower
    if cannot_open_or_write and (found := _missing_or_read_only(path)):
        return found
    if "unable to open" in lower:
        return (
            "check that the file and its folder are there (a moved folder, an unmounted disk) "
            "and that this account may write there, or set " + ENV_URL
        )
    if "readonly" in lower:
        return "the file or its folder is read-only: check that this account may write there"
    if "locked" in lower or "busy" in lower:
        return "another program holds it locked; try again, and close any other tool using it"
    if "not a database" in lower or "malformed" in lower:
        return "the file is damaged or not a riskset database: restore it from a backup"
    return "check the file, or point " + ENV_URL + " at another database"


# --------------------------------------------------------------------------------------
# Migrations (Alembic, run in-process: there is no alembic.ini to keep in step)
# --------------------------------------------------------------------------------------

MIGRATIONS = Path(__file__).with_name("migrations")


def _alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # env.py runs on this connection, inside the caller's transaction and lock.
    config.attributes["connection"] = connection
    return config


_FK_CHECK = "PRAGMA foreign_key_check"


@contextmanager
def _sqlite_foreign_keys_off(conn: Connection) -> Iterator[None]:
    """Rebuild tables without cascades: with foreign keys on, the DROP TABLE of a batch-mode
    table rebuild deletes every child row (ON DELETE CASCADE) before the new table takes the
    old one's name. The pragma only takes effect outside a transaction, so it is set on the
    driver connection before BEGIN; the migration checks the links itself (_FK_CHECK)."""
    if conn.dialect.name != "sqlite":
        yield
        return
    driver = conn.connection.driver_connection
    assert driver is not None  # nosec B101 # a checked-out SQLite connection always has its driver
    driver.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        try:
            driver.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error:
            conn.invalidate()  # never hand a connection without foreign keys back to the pool


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise RecordsUnavailable(f"riskset is installed without its migrations ({MIGRATIONS})")
    return head


# --------------------------------------------------------------------------------------
# Validation of what goes into a record
# --------------------------------------------------------------------------------------


def _check_day(day: date) -> date:
    if day > date.today() + timedelta(days=1):  # one day of slack for time zones
        raise RecordsInputError(f"the day {day.isoformat()} is in the future")
    if day.year < 2000:
        raise RecordsInputError(f"the day {day.isoformat()} is too far in the past")
    return day


def _check_supplies(supplies: Mapping[str, int] | None) -> dict[str, int]:
    clean: dict[str, int] = {}
    for kind, count in (supplies or {}).items():
        if kind not in SUPPLY_KINDS:
            raise RecordsInputError(
                f"unknown supply {kind!r}: use one of {', '.join(SUPPLY_KINDS)}"
            )
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise RecordsInputError(f"the count of {kind} must be a whole number, 0 or more")
        if count > MAX_SUPPLY_COUNT:
            raise RecordsInputError(f"{count} {kind} in one encounter is more than riskset takes")
        if count:
            clean[kind] = count
    return clean


def _check_referrals(referrals: Iterable[str]) -> list[str]:
    clean = list(dict.fromkeys(referrals))
    unknown = [r for r in clean if r not in REFERRAL_KINDS]
    if unknown:
        raise RecordsInputError(
            f"unknown referral {unknown[0]!r}: use one of {', '.join(REFERRAL_KINDS)}"
        )
    return clean


def _codes_of(assessment: Assessment | None) -> tuple[list[str], list[str]]:
    """The finding codes and strategy ids of an assessment, checked against the vocabulary.

    The check matters because an Assessment can arrive as JSON from a client: a "code" that is
    not in the knowledge base could carry a name into the database.
    """
    if assessment is None:
        return [], []
    from .knowledge import load as load_knowledge

    kb = load_knowledge()
    known = set(kb.all_codes()) | set(kb.codes)
    codes = sorted(
        {f.code for f in [*assessment.present(), *assessment.signs] if f.status == "present"}
    )
    strategies = list(dict.fromkeys(item.strategy for item in assessment.plan))
    bad = [c for c in codes if c not in known] + [s for s in strategies if s not in kb.strategies]
    if bad:
        raise RecordsInputError(f"unknown code in the assessment: {bad[0]!r}")
    return codes, strategies


def _check_username(username: str) -> str:
    name = username.strip().lower()
    if not _USERNAME.fullmatch(name):
        raise RecordsInputError(
            "a username is 2 to 64 letters, digits, dots, dashes or underscores"
        )
    return name


def _check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise RecordsInputError(f"the password must be at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise RecordsInputError("the password is longer than 1024 characters")
    return password


def _check_site_name(name: str) -> str:
    clean = " ".join(name.split())
    if not _SITE_NAME.fullmatch(clean):
        raise RecordsInputError("a site name is 1 to 80 letters, digits, spaces or - ' & ( ) /")
    return clean


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise RecordsInputError(f"unknown role {role!r}: use worker, supervisor or admin")
    return role


def _csv_safe(value: str) -> str:
    # A cell starting with = + - @ is run as a formula by spreadsheet programs.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


# --------------------------------------------------------------------------------------
# The records
# --------------------------------------------------------------------------------------

_hasher = PasswordHasher()


@cache
def _dummy_hash() -> str:
    """Checked when a username is unknown, so a wrong name costs as long as a wrong password."""
    return _hasher.hash("riskset: no such account")


class Records:
    """The encounter records of one program, in one database.

    ``Records()`` opens ``RISKSET_DATABASE_URL`` or the default SQLite file, bringing its
    tables up to date (``migrate=False`` skips that). Every method opens and closes its own
    transaction, so one ``Records`` may serve many threads.
    """

    def __init__(self, url: str | None = None, *, migrate: bool = True) -> None:
        self._url = _parse_url(url if url is not None else default_database_url())
        self.backend: Literal["sqlite", "postgresql"] = cast(
            Literal["sqlite", "postgresql"], self._url.get_backend_name()
        )
        self.engine = _make_engine(self._url)
        self._reads = sessionmaker(self.engine, expire_on_commit=False)
        self._writes = sessionmaker(
            self.engine.execution_options(riskset_begin="IMMEDIATE"), expire_on_commit=False
        )
        if migrate:
            try:
                self.migrate()
            except BaseException:
                self.engine.dispose()
                raise

    # ---- plumbing ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The database URL with any password hidden: safe to print and to log."""
        return self._url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Records:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _unavailable(self, err: BaseException, *, maybe_saved: bool = False) -> RecordsUnavailable:
        message = _first_line(err)
        where = (self._url.database or "(memory)") if self.backend == "sqlite" else self.url
        if _is_storage_full(err):
            return RecordsStorageFull(
                f"the records database {where} is full: {message}; free space on its disk "
                "(or raise its size limit), then try again; what was saved before is kept"
            )
        if self.backend == "sqlite":
            return RecordsUnavailable(
                f"cannot use the records database {where}: {message}; "
                + _sqlite_hint(message, _sqlite_file(self._url))
            )
        return RecordsUnavailable(
            f"cannot use the records database {where}: {message}; check that the PostgreSQL "
            f"server is running and reachable and that {ENV_URL} is right",
            maybe_saved=maybe_saved,
        )

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn any driver failure into RecordsUnavailable (integrity errors stay for callers)."""
        try:
            yield
        except exc.IntegrityError:
            raise
        except (exc.DBAPIError, exc.TimeoutError, sqlite3.Error) as err:
            raise self._unavailable(err) from None

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._guard(), self._reads() as session, session.begin():
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._guard(), self._writes() as session:
            session.begin()
            yield session
            session.flush()  # so that only COMMIT itself is left to fail in _commit
            self._commit(session)

    def _commit(self, session: Session) -> None:
        try:
            session.commit()
        except exc.IntegrityError:
            raise
        except exc.DBAPIError as err:
            # SQLite commits or not, and says which. A PostgreSQL server whose connection broke
            # during COMMIT may have committed before the answer was lost.
            lost = self.backend == "postgresql" and err.connection_invalidated
            raise self._unavailable(err, maybe_saved=lost) from None

    def migrate(self) -> str:
        """Bring the tables to the newest revision; safe when many processes open at once.

        Returns the revision. The tables are made by the Alembic migrations in
        ``riskset/migrations``, never by ``create_all``, so every database has one history.
        """
        head = head_revision()
        with self._guard():
            with self.engine.connect() as conn:
                if MigrationContext.configure(conn).get_current_revision() == head:
                    return head
            # One transaction for every revision, on both backends (SQLite's DDL is
            # transactional too): a migration killed half-way leaves the old revision whole.
            with self.engine.connect() as conn, _sqlite_foreign_keys_off(conn):
                conn.execution_options(riskset_begin="IMMEDIATE")
                with conn.begin():
                    self._upgrade(conn)
        return head

    def _upgrade(self, conn: Connection) -> None:
        # Serialise migrators: SQLite by BEGIN IMMEDIATE, PostgreSQL by an advisory lock.
        if self.backend == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})")
        try:
            command.upgrade(_alembic_config(conn), "head")
        except CommandError as err:
            raise RecordsUnavailable(
                f"the records database {self.url} has a schema this riskset does not "
                f"know ({err}); was it made by a newer riskset?"
            ) from None
        if self.backend == "sqlite" and (broken := conn.exec_driver_sql(_FK_CHECK).first()):
            raise RecordsUnavailable(
                f"a migration of {self.url} would leave rows of {broken[0]} pointing at "
                "nothing, so it was undone and nothing changed; report this to riskset's makers"
            )

    # ---- sites ------------------------------------------------------------------------

    def add_site(self, name: str) -> str:
        """Create a site (or return the existing one of that name)."""
        name = _check_site_name(name)
        with self._write() as s:
            return self._site_named(s, name, create=True).name

    def sites(self) -> list[str]:
        with self._read() as s:
            return list(s.scalars(select(Site.name).where(Site.active).order_by(Site.name)))

    @staticmethod
    def _site_named(s: Session, name: str, *, create: bool = False) -> Site:
        site = s.scalar(select(Site).where(Site.name == name))
        if site is None and create:
            site = Site(name=name, active=True)
            s.add(site)
            s.flush()
        if site is None:
            raise RecordsInputError(f"there is no site called {name!r}")
        return site

    def visible_sites(self, user: UserInfo) -> tuple[str, ...]:
        """The sites whose records an account may see: an admin all, others their own."""
        return tuple(self.sites()) if user.has_role("admin") else user.sites

    # ---- users ------------------------------------------------------------------------

    def add_user(
        self,
        username: str,
        password: str,
        role: str = "worker",
        sites: Sequence[str] = (),
        *,
        actor: UserInfo | str | None = None,
    ) -> UserInfo:
        """Create an account; sites that do not exist yet are created with it."""
        name = _check_username(username)
        role = _check_role(role)
        password_hash = _hasher.hash(_check_password(password))
        site_names = [_check_site_name(site) for site in sites]
        try:
            with self._write() as s:
                account = UserAccount(
                    username=name,
                    password_hash=password_hash,
                    role=role,
                    active=True,
                    session_epoch=0,
                    sites=[self._site_named(s, site, create=True) for site in site_names],
                )
                s.add(account)
                s.flush()
                info = _user_info(account)
                self._log(s, actor or cli_actor(), "add_user", f"{name} role={role}")
                return info
        except exc.IntegrityError:
            raise RecordsInputError(f"there is already an account called {name!r}") from None

    def users(self) -> list[UserInfo]:
        with self._read() as s:
            rows = s.scalars(
                select(UserAccount)
                .options(selectinload(UserAccount.sites))
                .order_by(UserAccount.username)
            )
            return [_user_info(row) for row in rows]

    def user(self, user_id: int) -> UserInfo | None:
        with self._read() as s:
            row = s.get(UserAccount, user_id, options=[selectinload(UserAccount.sites)])
            return _user_info(row) if row else None

    def authenticate(self, username: str, password: str) -> UserInfo | None:
        """The active account these credentials open, or None; both outcomes are audited."""
        name = username.strip().lower()
        with self._read() as s:
            row = s.scalar(select(UserAccount).where(UserAccount.username == name))
            stored = row.password_hash if row and row.active else _dummy_hash()
        try:
            _hasher.verify(stored, password)
            ok = row is not None and row.active
        except (VerificationError, InvalidHashError):
            ok = False
        with self._write() as s:
            if not ok or row is None:
                # A mistyped username can be a password typed in the wrong box: never log it.
                detail = name if row is not None else "(unknown account)"
                self._log(s, "(anonymous)", "login_failed", detail)
                return None
            account = s.get_one(UserAccount, row.id, options=[selectinload(UserAccount.sites)])
            if _hasher.check_needs_rehash(account.password_hash):
                account.password_hash = _hasher.hash(password)
            self._log(s, _user_info(account), "login", "")
            return _user_info(account)

    def set_password(self, username: str, password: str, *, actor: UserInfo | str) -> None:
        """Set a new password and end the account's sessions."""
        password_hash = _hasher.hash(_check_password(password))
        with self._write() as s:
            account = self._account_named(s, username)
            account.password_hash = password_hash
            account.session_epoch += 1
            self._log(s, actor, "set_password", account.username)

    def set_active(self, username: str, active: bool, *, actor: UserInfo | str) -> None:
        """Disable or re-enable an account (accounts are never deleted: records point at them)."""
        with self._write() as s:
            account = self._account_named(s, username)
            account.active = active
            account.session_epoch += 1
            self._log(s, actor, "enable_user" if active else "disable_user", account.username)

    def set_user_sites(self, username: str, sites: Sequence[str], *, actor: UserInfo | str) -> None:
        names = [_check_site_name(site) for site in sites]
        with self._write() as s:
            account = self._account_named(s, username)
            account.sites = [self._site_named(s, name) for name in names]
            self._log(s, actor, "set_sites", f"{account.username}: {', '.join(names) or '-'}")

    def end_sessions(self, user: UserInfo) -> None:
        """Log an account out everywhere (its signed session cookies carry the old epoch)."""
        with self._write() as s:
            s.execute(
                update(UserAccount)
                .where(UserAccount.id == user.id)
                .values(session_epoch=UserAccount.session_epoch + 1)
            )
            self._log(s, user, "logout", "")

    @staticmethod
    def _account_named(s: Session, username: str) -> UserAccount:
        name = username.strip().lower()
        account = s.scalar(select(UserAccount).where(UserAccount.username == name))
        if account is None:
            raise RecordsInputError(f"there is no account called {name!r}")
        return account

    # ---- settings ---------------------------------------------------------------------

    def settings(self) -> ProgramSettings:
        with self._read() as s:
            row = s.get(Setting, 1)
        if row is None:
            return ProgramSettings()
        return ProgramSettings(row.retention_days, row.keep_narratives)

    def update_settings(self, new: ProgramSettings, *, actor: UserInfo | str) -> ProgramSettings:
        """Save the settings. Turning ``keep_narratives`` off deletes the narratives kept so far:
        the setting promises that none are held, not only that no new ones are."""
        days = new.retention_days
        if days is not None and not 1 <= days <= 36_500:
            raise RecordsInputError("the retention period is 1 to 36500 days, or none")
        with self._write() as s:
            row = s.get(Setting, 1) or Setting(id=1)
            row.retention_days, row.keep_narratives = days, new.keep_narratives
            s.add(row)
            dropped = 0
            if not new.keep_narratives:
                dropped = _rowcount(
                    s.execute(
                        update(Encounter)
                        .where(Encounter.narrative.is_not(None))
                        .values(narrative=None)
                    )
                )
            self._log(
                s,
                actor,
                "settings",
                f"retention_days={days} keep_narratives={new.keep_narratives}"
                + (f" narratives_deleted={dropped}" if dropped else ""),
            )
        return ProgramSettings(days, new.keep_narratives)

    # ---- encounters -------------------------------------------------------------------

    def add_encounter(
        self,
        assessment: Assessment | None,
        *,
        site: str,
        worker: UserInfo | str,
        day: date | None = None,
        supplies: Mapping[str, int] | None = None,
        referrals: Iterable[str] = (),
        follow_up: bool = False,
        narrative: str | None = None,
    ) -> int:
        """Record one encounter and return its id.

        Only the assessment's present finding codes, risk level and strategies are kept, never
        its text or evidence. ``narrative`` is kept only when the program setting
        ``keep_narratives`` is on, and then only as ``scrub(narrative).text``.
        """
        day = _check_day(day or date.today())
        codes, strategies = _codes_of(assessment)
        clean_supplies = _check_supplies(supplies)
        clean_referrals = _check_referrals(referrals)
        kept = self._narrative_to_keep(narrative)  # scrubbed outside the write lock: it is slow
        with self._write() as s:
            account = self._recording_account(s, worker)
            site_id = self._recording_site(s, account, site)
            # Core inserts, not the ORM unit of work: the write lock is held for less time.
            encounter_id: int = s.execute(
                insert(Encounter).returning(Encounter.id),
                [
                    {
                        "day": day,
                        "site_id": site_id,
                        "worker_id": account.id,
                        "risk_level": assessment.overdose_risk.level.value if assessment else None,
                        "follow_up": follow_up,
                        "narrative": kept,
                        "knowledge_version": assessment.knowledge_version if assessment else None,
                    }
                ],
            ).scalar_one()
            for table, rows in (
                (EncounterCode, [{"code": c} for c in codes]),
                (EncounterStrategy, [{"strategy": x} for x in strategies]),
                (EncounterSupply, [{"kind": k, "count": n} for k, n in clean_supplies.items()]),
                (EncounterReferral, [{"kind": k} for k in clean_referrals]),
            ):
                if rows:
                    s.execute(insert(table), [row | {"encounter_id": encounter_id} for row in rows])
            return encounter_id

    def _narrative_to_keep(self, narrative: str | None) -> str | None:
        if narrative is None or not narrative.strip() or not self.settings().keep_narratives:
            return None
        if len(narrative) > MAX_NARRATIVE:
            raise RecordsInputError(f"the narrative is longer than {MAX_NARRATIVE:,} characters")
        from .scrub import scrub

        try:
            return scrub(narrative).text
        except Exception as err:  # never fall back to storing the unscrubbed words
            raise RecordsError(
                f"the narrative could not be scrubbed, so nothing was saved: {err}"
            ) from None

    @staticmethod
    def _recording_account(s: Session, worker: UserInfo | str) -> UserAccount:
        name = worker.username if isinstance(worker, UserInfo) else worker
        account = s.scalar(select(UserAccount).where(UserAccount.username == name.strip().lower()))
        if account is None or not account.active:
            raise RecordsInputError(f"there is no active account called {name!r}")
        return account

    @staticmethod
    def _recording_site(s: Session, account: UserAccount, site: str) -> int:
        """The id of an open site the account works at (an admin may record anywhere)."""
        row = s.execute(
            select(Site.id, Site.active, UserSite.user_id)
            .outerjoin(UserSite, (UserSite.site_id == Site.id) & (UserSite.user_id == account.id))
            .where(Site.name == site)
        ).first()
        if row is None:
            raise RecordsInputError(f"there is no site called {site!r}")
        if not row.active:
            raise RecordsInputError(f"the site {site!r} is closed")
        if row.user_id is None and account.role != "admin":
            raise AccessDenied(f"{account.username} does not work at {site}")
        return int(row.id)

    def my_encounters(self, worker: UserInfo, *, limit: int = 500) -> list[EncounterInfo]:
        """A worker's own encounters, newest first, at the sites they still work at."""
        sites = self.visible_sites(worker)
        with self._read() as s:
            stmt = (
                _encounter_query()
                .join(Site, Encounter.site_id == Site.id)
                .where(Encounter.worker_id == worker.id, Site.name.in_(sites))
                .order_by(Encounter.day.desc(), Encounter.id.desc())
                .limit(limit)
            )
            return [_encounter_info(row) for row in s.scalars(stmt)]

    def encounters(
        self,
        *,
        viewer: UserInfo | str,
        date_from: date | None = None,
        date_to: date | None = None,
        site: str | None = None,
        limit: int | None = None,
    ) -> list[EncounterInfo]:
        """Encounters in a date range and site, oldest first; audited as a view."""
        scope = self._scope(viewer, date_from, date_to, site)
        self.audit(viewer, "list_encounters", _describe(scope, date_from, date_to))
        with self._read() as s:
            stmt = (
                _encounter_query()
                .join(Site, Encounter.site_id == Site.id)
                .where(*scope.where)
                .order_by(Encounter.day, Encounter.id)
                .limit(limit)
            )
            return [_encounter_info(row) for row in s.scalars(stmt)]

    def count(self) -> int:
        with self._read() as s:
            return s.scalar(select(func.count()).select_from(Encounter)) or 0

    def _scope(
        self,
        viewer: UserInfo | str,
        date_from: date | None,
        date_to: date | None,
        site: str | None,
    ) -> _Scope:
        """Which encounters a viewer may see. A string viewer is the terminal's operator, who
        holds the database itself; an account sees only its sites, and a worker no report."""
        if date_from and date_to and date_from > date_to:
            raise RecordsInputError("the start day is after the end day")
        scope = _Scope()
        if isinstance(viewer, UserInfo):
            if not viewer.has_role("supervisor"):
                raise AccessDenied("reports are for supervisors and admins")
            allowed = self.visible_sites(viewer)
            if site is not None and site not in allowed:
                raise AccessDenied(f"{viewer.username} may not see the records of {site!r}")
            scope.sites = (site,) if site else allowed
            scope.where.append(Site.name.in_(scope.sites))
        elif site is not None:
            if site not in self.sites():
                raise RecordsInputError(f"there is no site called {site!r}")
            scope.sites = (site,)
            scope.where.append(Site.name == site)
        if date_from:
            scope.where.append(Encounter.day >= date_from)
        if date_to:
            scope.where.append(Encounter.day <= date_to)
        return scope

    # ---- reports ----------------------------------------------------------------------

    def report(
        self, *, viewer: UserInfo | str, date_from: date, date_to: date, site: str | None = None
    ) -> Report:
        """Counts for a date range and site (all the viewer may see when no site is given)."""
        scope = self._scope(viewer, date_from, date_to, site)
        self.audit(viewer, "view_report", _describe(scope, date_from, date_to))
        with self._read() as s:
            return Report(
                date_from=date_from,
                date_to=date_to,
                sites=scope.sites or tuple(self._all_site_names(s)),
                total=_scalar_count(s, select(func.count(Encounter.id)), scope),
                follow_ups=_scalar_count(
                    s, select(func.count(Encounter.id)).where(Encounter.follow_up), scope
                ),
                per_week=_per_week(s, scope, date_from, date_to),
                by_level=_by_level(s, scope),
                by_substance=_by_child(
                    s, scope, EncounterCode.code, code_label, prefix="substance:"
                ),
                by_strategy=_by_child(s, scope, EncounterStrategy.strategy, code_label),
                supplies=_supply_totals(s, scope),
                referrals=_by_child(
                    s, scope, EncounterReferral.kind, lambda k: REFERRAL_KINDS.get(k, k)
                ),
            )

    @staticmethod
    def _all_site_names(s: Session) -> list[str]:
        return list(s.scalars(select(Site.name).order_by(Site.name)))

    def export_csv(
        self,
        out: TextIO,
        *,
        viewer: UserInfo | str,
        date_from: date,
        date_to: date,
        site: str | None = None,
    ) -> int:
        """Write one CSV row per encounter; returns the number of rows. Audited as an export.

        The export leaves riskset's care (mail, shared drives), so it holds less than the
        database: no worker account and no narrative.
        """
        scope = self._scope(viewer, date_from, date_to, site)
        self.audit(viewer, "export_csv", _describe(scope, date_from, date_to))
        with self._read() as s:
            stmt = (
                _encounter_query()
                .join(Site, Encounter.site_id == Site.id)
                .where(*scope.where)
                .order_by(Encounter.day, Encounter.id)
            )
            rows = [_encounter_info(row) for row in s.scalars(stmt)]
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(_csv_row(row))
        return len(rows)

    # ---- retention and backup ---------------------------------------------------------

    def purge(
        self,
        older_than_days: int | None = None,
        *,
        actor: UserInfo | str,
        today: date | None = None,
    ) -> int:
        """Delete encounters from before ``today - older_than_days``; returns how many.

        Without a number the program's retention setting is used. An encounter exactly that
        many days old is kept.
        """
        days = older_than_days if older_than_days is not None else self.settings().retention_days
        if days is None:
            raise RecordsInputError("no retention period is set: give the number of days")
        if days < 0:
            raise RecordsInputError("the number of days cannot be negative")
        cutoff = (today or date.today()) - timedelta(days=days)
        with self._write() as s:
            removed = _rowcount(
                s.execute(
                    delete(Encounter)
                    .where(Encounter.day < cutoff)
                    .execution_options(synchronize_session=False)
                )
            )
            self._log(s, actor, "purge", f"before {cutoff.isoformat()}: {removed} removed")
            return removed

    def backup(self, path: str | os.PathLike[str], *, actor: UserInfo | str) -> Path:
        """Copy a SQLite database, consistently and while in use, to a new file at ``path``."""
        if self.backend != "sqlite":
            libpq_url = self.url.replace("postgresql+psycopg://", "postgresql://", 1)
            raise RecordsError(
                "riskset backs up SQLite only; back up PostgreSQL with pg_dump, e.g. "
                f"pg_dump --format=custom --file=riskset.dump '{libpq_url}'"
            )
        target = Path(path)
        if target.exists():
            raise RecordsInputError(f"{target} already exists: choose a new file name")
        partial = target.with_name(target.name + ".partial")
        try:
            os.close(os.open(partial, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600))
        except OSError as err:
            raise RecordsInputError(f"cannot write the backup to {target}: {err}") from None
        try:
            self._copy_sqlite(partial)
            os.replace(partial, target)  # a backup file is whole or absent, never half written
        finally:
            partial.unlink(missing_ok=True)
        self.audit(actor, "backup", str(target))
        return target

    def _copy_sqlite(self, target: Path) -> None:
        with self._guard():
            raw = self.engine.raw_connection()
            try:
                with closing(sqlite3.connect(target)) as dest:
                    raw.driver_connection.backup(dest)  # type: ignore[union-attr]
            finally:
                raw.close()

    # ---- audit log --------------------------------------------------------------------

    def audit(self, actor: UserInfo | str, action: str, detail: str = "") -> None:
        """Record who did what. Written before the data it describes is handed out."""
        with self._write() as s:
            self._log(s, actor, action, detail)

    @staticmethod
    def _log(s: Session, actor: UserInfo | str, action: str, detail: str) -> None:
        s.add(
            AuditLog(
                at=datetime.now(UTC),
                actor=(actor.username if isinstance(actor, UserInfo) else actor)[:80],
                user_id=actor.id if isinstance(actor, UserInfo) else None,
                action=action[:40],
                detail=detail[:400],
            )
        )

    def audit_log(self, *, limit: int = 200) -> list[AuditRecord]:
        with self._read() as s:
            rows = s.scalars(select(AuditLog).order_by(AuditLog.id.desc()).limit(limit))
            return [AuditRecord(_utc(r.at), r.actor, r.action, r.detail) for r in rows]


# --------------------------------------------------------------------------------------
# Queries and conversions
# --------------------------------------------------------------------------------------

CSV_COLUMNS = [
    "day",
    "iso_week",
    "site",
    "risk_level",
    "substances",
    "findings",
    "strategies",
    "referrals",
    "follow_up",
    *(f"supplies_{kind}" for kind in SUPPLY_KINDS),
]


def _utc(moment: datetime) -> datetime:
    # SQLite hands back the UTC time it was given without its zone; PostgreSQL keeps it.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _rowcount(result: Result[Any]) -> int:
    # DML results are CursorResults at run time; the Session's signature says only Result.
    return int(cast(CursorResult[Any], result).rowcount)


def _user_info(row: UserAccount) -> UserInfo:
    return UserInfo(
        id=row.id,
        username=row.username,
        role=_check_role(row.role),
        sites=tuple(site.name for site in row.sites),
        active=row.active,
        session_epoch=row.session_epoch,
    )


def _encounter_query() -> Any:
    return select(Encounter).options(
        selectinload(Encounter.codes),
        selectinload(Encounter.strategies),
        selectinload(Encounter.supplies),
        selectinload(Encounter.referrals),
        selectinload(Encounter.site),
        selectinload(Encounter.worker),
    )


def _encounter_info(row: Encounter) -> EncounterInfo:
    return EncounterInfo(
        id=row.id,
        day=row.day,
        site=row.site.name,
        worker=row.worker.username,
        risk_level=row.risk_level,
        codes=tuple(sorted(c.code for c in row.codes)),
        strategies=tuple(sorted(x.strategy for x in row.strategies)),
        supplies={x.kind: x.count for x in row.supplies},
        referrals=tuple(sorted(x.kind for x in row.referrals)),
        follow_up=row.follow_up,
        narrative=row.narrative,
    )


def _csv_row(row: EncounterInfo) -> list[str | int]:
    findings = [c for c in row.codes if not c.startswith("substance:")]
    return [
        row.day.isoformat(),
        iso_week(row.day),
        _csv_safe(row.site),
        row.risk_level or NOT_ASSESSED,
        ";".join(s[10:] for s in row.substances),
        ";".join(findings),
        ";".join(row.strategies),
        ";".join(row.referrals),
        int(row.follow_up),
        *(row.supplies.get(kind, 0) for kind in SUPPLY_KINDS),
    ]


def _describe(scope: _Scope, date_from: date | None, date_to: date | None) -> str:
    start = date_from.isoformat() if date_from else "…"
    end = date_to.isoformat() if date_to else "…"
    return f"sites={','.join(scope.sites) or 'all'} days={start}..{end}"


def _scalar_count(s: Session, stmt: Any, scope: _Scope) -> int:
    stmt = stmt.select_from(Encounter).join(Site, Encounter.site_id == Site.id)
    return int(s.scalar(stmt.where(*scope.where)) or 0)


def _grouped(
    s: Session, key: Any, value: Any, scope: _Scope, child: Any = None, *extra: Any
) -> list[tuple[Any, int]]:
    stmt = select(key, value).select_from(Encounter).join(Site, Encounter.site_id == Site.id)
    if child is not None:
        stmt = stmt.join(child, child.encounter_id == Encounter.id)
    stmt = stmt.where(*scope.where, *extra).group_by(key)
    return [(k, int(v or 0)) for k, v in s.execute(stmt).all()]


def _per_week(s: Session, scope: _Scope, date_from: date, date_to: date) -> list[Count]:
    # Grouped by day in SQL and folded into ISO weeks here: SQLite has no ISO week function.
    weeks: Counter[str] = Counter()
    for day, n in _grouped(s, Encounter.day, func.count(Encounter.id), scope):
        weeks[iso_week(day)] += n
    out: list[Count] = []
    monday = date_from - timedelta(days=date_from.weekday())
    while monday <= date_to:  # every week in the range, so a quiet week shows as a gap
        label = iso_week(monday)
        out.append(Count(label, f"week of {monday.isoformat()}", weeks[label]))
        monday += timedelta(days=7)
    return out


def _by_level(s: Session, scope: _Scope) -> list[Count]:
    counts = Counter(
        {
            level or NOT_ASSESSED: n
            for level, n in _grouped(s, Encounter.risk_level, func.count(Encounter.id), scope)
        }
    )
    keys = [level.value for level in LEVEL_ORDER] + [NOT_ASSESSED]
    return [Count(k, k.replace("_", " ").capitalize(), counts[k]) for k in keys if counts[k]]


def _by_child(
    s: Session, scope: _Scope, column: Any, labels: Callable[[str], str], prefix: str = ""
) -> list[Count]:
    extra = [column.startswith(prefix)] if prefix else []
    child = column.class_
    rows = _grouped(s, column, func.count(func.distinct(Encounter.id)), scope, child, *extra)
    return _ranked(rows, labels)


def _supply_totals(s: Session, scope: _Scope) -> list[Count]:
    rows = _grouped(
        s, EncounterSupply.kind, func.sum(EncounterSupply.count), scope, EncounterSupply
    )
    return _ranked(rows, lambda kind: SUPPLY_KINDS.get(kind, kind))


def _ranked(rows: list[tuple[Any, int]], labels: Callable[[str], str]) -> list[Count]:
    ordered = sorted(rows, key=lambda kv: (-kv[1], str(kv[0])))
    return [Count(str(key), labels(str(key)), n) for key, n in ordered]


def code_label(code: str) -> str:
    """A reader's label for a stored finding code or strategy id."""
    from .knowledge import load as load_knowledge

    kb = load_knowledge()
    if code in kb.strategies:
        return kb.strategies[code].label
    return kb.label(code)
