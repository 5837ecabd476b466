"""The `[historian]` section of the site file, read and checked field by field.

Without a section (or with `backend = "embedded"`) history goes to the embedded SQLite store
next to the site file. `backend = "influxdb"` (implied by `url`) writes line protocol to an
InfluxDB-compatible server through a disk spool. `backend = "none"` switches history off.
Relative paths are relative to the site file's folder. docs/historian.md is the reference.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openprepay.core.config.reader import TableReader
from openprepay.core.config.site import RELATIVE_WITHOUT_SITE, Site, site_relative_path
from openprepay.core.errors import ConfigError, FieldError

SECTION = "historian"


class Backend(enum.StrEnum):
    EMBEDDED = "embedded"
    INFLUXDB = "influxdb"
    NONE = "none"


class Api(enum.StrEnum):
    #: /api/v2/write through influxdb-client: InfluxDB 1.8+, 2.x, 3.x and compatibles.
    V2 = "v2"
    #: The 1.x /write endpoint (db, retention policy, user/password): servers before 1.8.
    V1 = "v1"


class DropPolicy(enum.StrEnum):
    #: A full spool deletes its oldest batches to make room: recent data wins.
    DROP_OLDEST = "drop_oldest"
    #: A full spool refuses new data: the backlog is kept intact.
    DROP_NEWEST = "drop_newest"


@dataclass(frozen=True, slots=True)
class InfluxTarget:
    """Where and how to write and read (the server part of the configuration)."""

    url: str
    api: Api
    #: v2: token ("user:password" on 1.8), org and bucket ("db/rp" on 1.8).
    token: str | None = None
    org: str = "-"
    bucket: str | None = None
    #: v1: database, retention policy and credentials.
    db: str | None = None
    rp: str | None = None
    username: str | None = None
    password: str | None = None
    #: Database (and retention policy) InfluxQL reads use; defaults to db / bucket.
    query_db: str | None = None
    query_rp: str | None = None
    timeout_s: float = 10.0
    gzip: bool = True
    verify_ssl: bool = True
    #: v1: CREATE DATABASE at start (needs admin rights).
    create_database: bool = False

    @property
    def read_db(self) -> str:
        return self.query_db or self.db or (self.bucket or "").split("/")[0]

    @property
    def read_rp(self) -> str | None:
        if self.query_rp or self.query_db:
            return self.query_rp
        if self.api is Api.V1:
            return self.rp
        parts = (self.bucket or "").split("/", 1)
        return parts[1] if len(parts) == 2 and parts[1] else None


@dataclass(frozen=True, slots=True)
class HistorianConfig:
    backend: Backend = Backend.EMBEDDED
    #: Embedded store file; None keeps it in memory (a site without a file).
    path: Path | None = None
    retention_days: float = 30.0
    influx: InfluxTarget | None = None
    #: Lines (InfluxDB points) per write request, and the longest a line waits for a batch.
    batch_size: int = 5000
    flush_interval_s: float = 1.0
    #: How often accepted samples are committed (fsync) to the spool or embedded store.
    commit_interval_s: float = 0.1
    spool_dir: Path | None = None
    spool_max_bytes: int = 1024 * 1024 * 1024
    quarantine_max_bytes: int = 64 * 1024 * 1024
    drop_policy: DropPolicy = DropPolicy.DROP_OLDEST
    retry_initial_s: float = 0.5
    retry_max_s: float = 60.0
    stats_interval_s: float = 10.0
    #: At stop, how long the spool keeps draining before the rest waits for the next start.
    stop_timeout_s: float = 10.0
    #: Samples waiting in memory for the next commit before the drop policy applies there.
    max_pending: int = 200_000
    #: Beyond `max_pending`, samples wait on disk up to this size (0: no overflow; the drop
    #: policy applies at once), historian/overflow.py.
    overflow_max_bytes: int = 512 * 1024 * 1024
    #: Write requests at a time. 1 keeps acknowledgements in strict order; more lets a
    #: server that ingests in parallel work on two batches at once (a failure then re-sends
    #: the batches after the failed one too, which InfluxDB absorbs).
    max_in_flight: int = 1


def read_config(site: Site) -> HistorianConfig:
    """The historian configuration of `site`; raises `ConfigError` naming every bad field."""
    config, errors = check_config(site)
    if errors:
        raise ConfigError(str(site.path or "site"), errors)
    assert config is not None
    return config


def check_config(site: Site) -> tuple[HistorianConfig | None, list[FieldError]]:
    """The `[historian]` configuration and every error in it. Long because it is the one
    list of the section's settings, all read before `finish()` reports the unknown ones."""
    errors: list[FieldError] = []
    data: Any = site.sections.get(SECTION, {})
    r = TableReader(data, SECTION, errors)
    base = site.path.parent if site.path is not None else None
    d = HistorianConfig()

    backend_name = r.str(
        "backend",
        Backend.INFLUXDB.value if "url" in r.data else Backend.EMBEDDED.value,
        choices=[b.value for b in Backend],
    )
    backend = Backend(backend_name) if backend_name else None

    # Embedded store.
    path = r.str("path", "history.sqlite")
    retention = r.number("retention_days", d.retention_days, low=0.0, low_exclusive=True)

    server = _read_server(r)

    # Spool and batching.
    batch_size = r.int("batch_size", d.batch_size, low=1, high=1_000_000)
    flush_ms = r.number("flush_interval_ms", 1000, low=0, high=3_600_000)
    commit_ms = r.number("commit_interval_ms", 100, low=1, high=60_000)
    spool_dir = r.str("spool_dir", "historian-spool")
    spool_max_mb = r.number("spool_max_mb", 1024, low=0.0, low_exclusive=True)
    quarantine_max_mb = r.number("quarantine_max_mb", 64, low=0.0, low_exclusive=True)
    policy = r.str("drop_policy", d.drop_policy.value, choices=[p.value for p in DropPolicy])
    retry_initial_ms = r.number("retry_initial_ms", 500, low=1, high=3_600_000)
    retry_max_ms = r.number("retry_max_ms", 60_000, low=1, high=3_600_000)
    stats_s = r.number("stats_interval_s", d.stats_interval_s, low=0.0, low_exclusive=True)
    stop_s = r.number("stop_timeout_s", d.stop_timeout_s, low=0.0)
    max_pending = r.int("max_pending", d.max_pending, low=1000, high=100_000_000)
    max_in_flight = r.int("max_in_flight", d.max_in_flight, low=1, high=8)
    overflow_max_mb = r.number("overflow_max_mb", 512, low=0.0, high=1_048_576)
    r.finish()

    server.token = _from_env(r, server.token, server.token_env, "token")
    server.password = _from_env(r, server.password, server.password_env, "password")
    if (
        retry_initial_ms is not None
        and retry_max_ms is not None
        and retry_max_ms < retry_initial_ms
    ):
        r.error(f"must be at least retry_initial_ms ({retry_initial_ms:g})", "retry_max_ms")

    influx = None
    if backend is Backend.INFLUXDB:
        influx = _influx_target(r, server)
    elif server.url is not None:
        r.error(f"is only used with backend = influxdb (backend is {backend_name})", "url")

    store_path = site_relative_path(path, base) if path is not None else None
    spool_path = None
    if spool_dir is not None:
        spool_path = site_relative_path(spool_dir, base)
        if spool_path is None and backend is Backend.INFLUXDB:
            r.error(RELATIVE_WITHOUT_SITE, "spool_dir")

    if errors or backend is None:
        return None, errors
    return (
        HistorianConfig(
            backend=backend,
            path=store_path,
            retention_days=retention,
            influx=influx,
            batch_size=batch_size,
            flush_interval_s=flush_ms / 1000,
            commit_interval_s=commit_ms / 1000,
            spool_dir=spool_path,
            spool_max_bytes=int(spool_max_mb * 1024 * 1024),
            quarantine_max_bytes=int(quarantine_max_mb * 1024 * 1024),
            drop_policy=DropPolicy(policy),
            retry_initial_s=retry_initial_ms / 1000,
            retry_max_s=retry_max_ms / 1000,
            stats_interval_s=stats_s,
            stop_timeout_s=stop_s,
            max_pending=max_pending,
            max_in_flight=max_in_flight,
            overflow_max_bytes=int(overflow_max_mb * 1024 * 1024),
        ),
        errors,
    )


@dataclass(slots=True)
class _ServerFields:
    """The InfluxDB settings as read, before they are checked together."""

    url: str | None
    api: str | None
    token: str | None
    token_env: str | None
    org: str | None
    bucket: str | None
    db: str | None
    rp: str | None
    username: str | None
    password: str | None
    password_env: str | None
    query_db: str | None
    query_rp: str | None
    timeout_ms: float | None
    gzip: bool | None
    verify_ssl: bool | None
    create_database: bool | None


def _read_server(r: TableReader) -> _ServerFields:
    return _ServerFields(
        url=r.str("url", None),
        api=r.str("api", Api.V2.value, choices=[a.value for a in Api]),
        token=r.str("token", None),
        token_env=r.str("token_env", None),
        org=r.str("org", "-"),
        bucket=r.str("bucket", None),
        db=r.str("db", None),
        rp=r.str("rp", None),
        username=r.str("username", None),
        password=r.str("password", None),
        password_env=r.str("password_env", None),
        query_db=r.str("query_db", None),
        query_rp=r.str("query_rp", None),
        timeout_ms=r.number("timeout_ms", 10_000, low=100, high=600_000),
        gzip=r.bool("gzip", True),
        verify_ssl=r.bool("verify_ssl", True),
        create_database=r.bool("create_database", False),
    )


def _from_env(r: TableReader, value: str | None, env: str | None, key: str) -> str | None:
    """`key` as given, or from the environment variable `<key>_env` names."""
    if env is None:
        return value
    if value is not None:
        r.error(f"give {key} or {key}_env, not both", f"{key}_env")
    value = os.environ.get(env)
    if value is None:
        r.error(f"environment variable {env} is not set", f"{key}_env")
    return value


def _influx_target(r: TableReader, f: _ServerFields) -> InfluxTarget | None:
    """The server of backend = influxdb; each setting of the other API version refused."""
    url, api = f.url, f.api
    if url is None:
        r.error("missing (required with backend = influxdb)", "url")
    elif not url.startswith(("http://", "https://")):
        r.error(f"expected an http:// or https:// URL, got {url!r}", "url")
    if api == Api.V2.value and f.bucket is None:
        r.error('missing (required with api = "v2"; "db/rp" on InfluxDB 1.8)', "bucket")
    if api == Api.V1.value and f.db is None:
        r.error('missing (required with api = "v1")', "db")
    if api == Api.V1.value:
        for key, value in (("token", f.token), ("bucket", f.bucket)):
            if value is not None:
                r.error('is a v2 setting; with api = "v1" use db, rp, username, password', key)
    if api == Api.V2.value:
        for key, value in (("db", f.db), ("rp", f.rp), ("username", f.username)):
            if value is not None:
                r.error(
                    f'is a v1 setting; with api = "v2" use token, org, bucket '
                    f"(query_db for reads), got {key} = {value!r}",
                    key,
                )
    if (f.username is None) != (f.password is None) and api == Api.V1.value:
        r.error("give both username and password, or neither", "username")
    if url is None or api is None or None in (f.timeout_ms, f.gzip, f.verify_ssl):
        return None
    return InfluxTarget(
        url=url.rstrip("/"),
        api=Api(api),
        token=f.token,
        org=f.org or "-",
        bucket=f.bucket,
        db=f.db,
        rp=f.rp,
        username=f.username,
        password=f.password,
        query_db=f.query_db,
        query_rp=f.query_rp,
        timeout_s=f.timeout_ms / 1000,  # type: ignore[operator]
        gzip=bool(f.gzip),
        verify_ssl=bool(f.verify_ssl),
        create_database=bool(f.create_database),
    )
