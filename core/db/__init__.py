"""The database: SQLite by default, PostgreSQL for shared or large deployments.

`Database.for_site(site)` reads the site file's `[database]` section::

    [database]
    url = "sqlite:///var/openprepay.db"     # default; relative paths are relative to the site file
    # url = "postgresql://openprepay@db.example/openprepay"
    # password_env = "OPENPREPAY_DB_PASSWORD"   # PostgreSQL: the password, from the environment
    busy_timeout_ms = 10000                 # SQLite: how long a writer waits for the lock

SQLite runs in WAL mode with `synchronous=FULL` (a committed top-up survives a power cut),
foreign keys on, and every write transaction starts with `BEGIN IMMEDIATE`, so writers
queue on the database lock instead of failing half-way with "database is locked" when a
read transaction tries to become a write. PostgreSQL uses row locks (`SELECT ... FOR
UPDATE`, `SKIP LOCKED` for claims): nothing assumes a single instance.

Transactions: `with db.begin() as conn:` is one write transaction (committed on exit,
rolled back on an exception); `with db.read() as conn:` is a read-only snapshot. The
service functions (`core.prepay.accounts`, `core.ledger`, `core.prepay.commands`) take a
connection, so a caller can put several of them in one transaction (a usage posting and the
TRIP it causes commit together or not at all).

Background writers use `db.write(work, what=...)`: the same transaction, run again after a
jittered back-off when the database is busy (`retry.py`); large batches are cut into
bounded transactions (`bounded.py`) so that no writer holds the lock for long.

Schema changes are Alembic migrations (`migrations/versions`), applied by
`openprepay db upgrade SITE` and automatically when the service starts.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from ..config.reader import TableReader
from ..errors import ConfigError, FieldError
from ..private_files import private_file
from .write_times import WRITES

if TYPE_CHECKING:
    from ..config.site import Site
    from .retry import Flag

log = logging.getLogger("openprepay.db")
# Alembic narrates every step at INFO; the product logs the one line that matters.
logging.getLogger("alembic").setLevel(logging.WARNING)

DEFAULT_SQLITE_PATH = Path("var") / "openprepay.db"
MIGRATIONS = Path(__file__).parent / "migrations"
R = TypeVar("R")
#: PostgreSQL's "cannot execute ... in a read-only transaction" (a demoted primary).
READ_ONLY_SQLSTATE = "25006"
#: PostgreSQL ended the session: idle inside a transaction past its limit (a frozen process).
IDLE_IN_TRANSACTION_TIMEOUT_SQLSTATE = "25P03"
#: What a bulk account opening fills (accounts, their meters and wallets, opening top-ups).
ANALYZED_AFTER_BULK = (
    "account", "account_meter", "meter", "prepay_meter", "wallet", "journal", "posting",
)  # fmt: skip
#: Key of the PostgreSQL advisory lock that serialises concurrent `upgrade()` calls.
_MIGRATION_LOCK = 0x6F70_7072_6570_6179 & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str
    busy_timeout_ms: int = 10000
    echo: bool = False


def read_database_config(site: Site) -> DatabaseConfig:
    """The `[database]` section of `site`, validated; errors name the field."""
    errors: list[FieldError] = []
    r = TableReader(dict(site.sections.get("database", {})), "database", errors)
    base = site.path.resolve().parent if site.path is not None else Path.cwd()
    default = f"sqlite:///{base / DEFAULT_SQLITE_PATH}"
    url = r.str("url", default)
    password_env = r.str("password_env", None)
    busy = r.int("busy_timeout_ms", 10000, low=0, high=600_000)
    echo = r.bool("echo", False)
    r.finish()
    if url is not None:
        try:
            url = normalise_url(url, base)
        except ValueError as exc:
            r.error(str(exc), "url")
    if url is not None and password_env is not None:
        url = _with_password(r, url, password_env)
    if errors:
        raise ConfigError(str(site.path or "site"), errors)
    return DatabaseConfig(url, busy, echo)


def _with_password(r: TableReader, url: str, variable: str) -> str:
    """`[database] password_env`: the PostgreSQL password from the environment, so that it
    is in neither the site file nor any command line."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        r.error("only a PostgreSQL database takes a password", "password_env")
    elif parsed.password is not None:
        r.error("the url already has a password: remove it from the url", "password_env")
    elif variable not in os.environ:
        r.error(f"environment variable {variable} is not set", "password_env")
    else:
        return parsed.set(password=os.environ[variable]).render_as_string(hide_password=False)
    return url


def normalise_url(url: str, base: Path | None = None) -> str:
    """Check a database URL and make it usable: relative SQLite paths are resolved against
    `base` (the site file's folder) and plain `postgresql://` gets the psycopg 3 driver."""
    hint = "expected sqlite:///PATH or postgresql://USER@HOST/DB"
    url = _multi_host(url)
    try:
        parsed = make_url(url)
    except Exception:
        raise ValueError(f"{hint}; got {url!r}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
            raise ValueError(f"{hint} (driver {parsed.drivername!r} is not supported)")
        path = parsed.database
        if not path or path == ":memory:" or path.startswith("file:"):
            raise ValueError(
                f"{hint}; an in-memory SQLite database would lose the ledger, got {url!r}"
            )
        if base is not None and not Path(path).is_absolute():
            parsed = parsed.set(database=str(base / path))
        return parsed.render_as_string(hide_password=False)
    if backend == "postgresql":
        if parsed.drivername in ("postgresql", "postgresql+psycopg"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        else:
            raise ValueError(f"{hint} (driver {parsed.drivername!r}; use postgresql://)")
        if not parsed.database:
            raise ValueError(f"{hint}; the URL names no database, got {url!r}")
        return parsed.render_as_string(hide_password=False)
    raise ValueError(f"{hint}; got {url!r}")


def _multi_host(url: str) -> str:
    """A libpq multi-host URL (`postgresql://u@db1:5432,db2:5432/ledger?target_session_attrs=
    read-write`, what Patroni and pg_auto_failover document) in the form SQLAlchemy reads:
    one `host=HOST:PORT` query parameter per host. Other URLs are returned as they are."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgresql"):
        return url
    authority, _slash, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if "," not in hosts:
        return url
    database, _question, query = tail.partition("?")
    params = [f"host={h}" for h in hosts.split(",") if h]
    if query:
        params.append(query)
    return f"{scheme}://{userinfo}{at}/{database}?{'&'.join(params)}"


class Database:
    """An engine configured for the ledger, with transaction helpers and migrations."""

    def __init__(self, url: str | URL, *, busy_timeout_ms: int = 10000, echo: bool = False):
        self.url = make_url(normalise_url(str(url)) if isinstance(url, str) else url)
        self.engine: Engine = _make_engine(self.url, busy_timeout_ms, echo)
        WRITES.watch(self.engine)

    @classmethod
    def for_site(cls, site: Site) -> Database:
        config = read_database_config(site)
        return cls(config.url, busy_timeout_ms=config.busy_timeout_ms, echo=config.echo)

    def end_idle_transactions_after(self, seconds: float) -> None:
        """PostgreSQL: the server ends any of this engine's sessions that sits inside a
        transaction without a statement for `seconds` (`idle_in_transaction_session_timeout`;
        connections opened before are dropped from the pool). A frozen process (SIGSTOP, a
        paused VM) would otherwise keep the row locks of its open transaction for ever — a
        cluster instance's lease rows, key-share-locked by its fence checks, then can never be
        taken over. Nothing of ours waits that long inside a transaction (bounded work)."""
        if self.dialect != "postgresql":
            return
        millis = max(1, int(seconds * 1000))

        @sa.event.listens_for(self.engine, "connect")
        def _limit(dbapi_conn: Any, _record: Any) -> None:
            with dbapi_conn.cursor() as cursor:
                cursor.execute(f"SET idle_in_transaction_session_timeout = {millis}")
            dbapi_conn.commit()

        self.engine.dispose()

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name

    def describe(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One write transaction: committed when the block ends, rolled back on error."""
        with self.engine.begin() as conn:
            yield conn

    def write(
        self,
        work: Callable[[Connection], R],
        *,
        what: str,
        attempts: int | None = None,
        stop: Flag | None = None,
    ) -> R:
        """Run `work(conn)` in one write transaction, run again after a jittered back-off
        while the database is busy (`core/db/retry.py`): what background writers use, so a
        busy database delays their work instead of killing it. `what` names it in the log."""
        from .retry import run_retrying

        return run_retrying(self, work, what=what, attempts=attempts, stop=stop)

    def analyze(self, tables: Sequence[str] = ANALYZED_AFTER_BULK) -> None:
        """Refresh the query planner's statistics of `tables` (after a bulk change).

        PostgreSQL plans from statistics that autovacuum refreshes only after a while (or
        never, where it is off): right after thousands of accounts are opened, a table the
        statistics still call empty got a nested loop where a hash join belonged — the
        account view's cost-of-today query took 12.7 s instead of 14 ms at 10,000 accounts.
        SQLite keeps such statistics only once asked (sqlite_stat1)."""
        with self.begin() as conn:  # PostgreSQL and SQLite both analyze in a transaction
            quote = conn.dialect.identifier_preparer.quote
            for table in tables:
                conn.execute(sa.text(f"ANALYZE {quote(table)}"))

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction (deferred on SQLite, so it never blocks writers)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="DEFERRED")
            with conn.begin():
                yield conn

    def upgrade(self, revision: str = "head") -> str | None:
        """Apply the migrations up to `revision`; returns the revision now current."""
        from alembic import command

        config = _alembic_config()
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
        return self.current_revision()

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="DEFERRED")
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(_alembic_config()).get_current_head()

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(site: Site, *, upgrade: bool = True) -> Database:
    """The site's database, migrated to the current schema (what the service calls at start)."""
    db = Database.for_site(site)
    if upgrade:
        before = db.current_revision()
        now = db.upgrade()
        if before != now:
            log.info("database %s migrated %s -> %s", db.describe(), before, now)
    return db


class FastStatement:
    """A hot-path statement run on the DBAPI cursor of a SQLAlchemy connection.

    The statement is written once in SQLAlchemy Core (one source of truth for both
    dialects) and compiled once per dialect; executing it skips SQLAlchemy's per-call
    machinery (about 35 µs a statement), which is what lets a committed top-up stay well
    under a millisecond. It runs on the same connection, inside the same transaction.
    Values are passed as the driver takes them: convert timestamps with `db_time` and
    JSON with `json.dumps`; rows come back as plain tuples.
    """

    def __init__(self, statement: Any, columns: tuple[str, ...] | None = None) -> None:
        self.statement = statement
        self.columns = columns
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None, dict[str, Any]]] = {}

    def _form(self, conn: Connection) -> tuple[str, tuple[str, ...] | None, dict[str, Any]]:
        form = self._compiled.get(conn.dialect.name)
        if form is None:
            statement = self.statement(conn) if callable(self.statement) else self.statement
            kwargs = {"column_keys": list(self.columns)} if self.columns is not None else {}
            compiled = statement.compile(dialect=conn.dialect, **kwargs)
            order = tuple(compiled.positiontup) if compiled.positional else None
            # Constants in the statement (literals, 'energy', 0) are bound parameters too.
            constants = {k: v for k, v in compiled.params.items() if v is not None}
            form = (compiled.string, order, constants)
            self._compiled[conn.dialect.name] = form
        return form

    def _args(
        self, form: tuple[str, tuple[str, ...] | None, dict[str, Any]], params: Mapping[str, Any]
    ) -> Any:
        _, order, constants = form
        if order is not None:
            return [params[n] if n in params else constants[n] for n in order]
        return {**constants, **params} if constants else params

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        form = self._form(conn)
        if not conn.in_transaction():  # what SQLAlchemy's autobegin would do
            conn.begin()
        cursor = conn.connection.driver_connection.cursor()
        cursor.execute(form[0], self._args(form, params))
        return cursor

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        form = self._form(conn)
        if not conn.in_transaction():
            conn.begin()
        cursor = conn.connection.driver_connection.cursor()
        cursor.executemany(form[0], [self._args(form, row) for row in rows])
        cursor.close()


def db_time(conn: Connection, value: datetime) -> Any:
    """A UTC timestamp as `FastStatement` passes it (what `schema.UtcDateTime` stores)."""
    value = value.astimezone(UTC)
    if conn.dialect.name == "sqlite":
        # SQLAlchemy's SQLite DATETIME text, "2025-01-01 08:00:00.000000".
        return value.replace(tzinfo=None).isoformat(" ", "microseconds")
    return value


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _enable_wal(cursor: Any, busy_timeout_ms: int) -> None:
    """Switch a database to WAL (persistent), retrying while another connection holds a
    lock: changing the journal mode does not wait on the busy timeout by itself."""
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.005
    mode = "?"
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() == "wal":
                return
        except sqlite3.OperationalError:
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise sqlite3.OperationalError(f"could not switch to WAL (journal mode {mode})")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _make_engine(url: URL, busy_timeout_ms: int, echo: bool) -> Engine:
    if url.get_backend_name() != "sqlite":
        engine = sa.create_engine(url, echo=echo, pool_pre_ping=True)

        @sa.event.listens_for(engine, "handle_error")
        def _on_error(context: Any) -> None:
            # A server that refuses writes (a primary demoted by Patroni or pg_auto_failover,
            # a standby) keeps refusing them: treat it as a lost connection, so the pool
            # drops every connection to it and the next checkout finds the new primary
            # (with a multi-host url and target_session_attrs=read-write).
            # A session the server ended for idling inside a transaction (the process was
            # frozen: `end_idle_transactions_after`) is gone too.
            if getattr(context.original_exception, "sqlstate", None) in (
                READ_ONLY_SQLSTATE,
                IDLE_IN_TRANSACTION_TIMEOUT_SQLSTATE,
            ):
                context.is_disconnect = True

        return engine

    # Created 0600 before SQLite opens it: its -wal and -shm files take the same mode.
    private_file(Path(url.database))
    engine = sa.create_engine(url, echo=echo)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module: we emit BEGIN ourselves.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        _enable_wal(cursor, busy_timeout_ms)
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.connection.driver_connection.execute(f"BEGIN {mode}")

    return engine
