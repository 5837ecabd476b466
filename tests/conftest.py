"""Fixtures for the real things the tests talk to, and helpers the suites share.

Servers are started on ephemeral ports from here: InfluxDB 1.x (`influxd`), VictoriaMetrics
(its /api/v2/write endpoint) and a throwaway PostgreSQL database. Without CI a missing
service skips the tests that need it; with CI=true it is a failure.

Suites import the helpers as `from tests.conftest import ...`: `until`/`until_async` wait
for a condition, `simulate` serves a site's simulated devices for a runtime to talk to.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from openprepay.core.app.plugins import Plugins
    from openprepay.core.app.simulation import SimulatedSite
    from openprepay.core.db import Database
    from openprepay.core.ledger import VerifyReport

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(what: str) -> None:
    """Fail in CI, skip elsewhere: a missing service is never a silent pass in CI."""
    if IN_CI:
        pytest.fail(f"{what} (CI=true: required)", pytrace=False)
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, ok: tuple[int, ...], proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


async def until(predicate: Callable[[], Any], timeout: float = 20.0, step: float = 0.05) -> None:
    """Wait until `predicate()` is true (never a timing assertion: the timeout only stops a
    hung test)."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(step)

    await asyncio.wait_for(poll(), timeout)


async def until_async(
    predicate: Callable[[], Awaitable[Any]], timeout: float = 20.0, step: float = 0.1
) -> None:
    """`until` for a predicate that must be awaited (an OPC UA read)."""

    async def poll() -> None:
        while not await predicate():
            await asyncio.sleep(step)

    await asyncio.wait_for(poll(), timeout)


async def simulate(data: dict[str, Any], plugins: Plugins, *, speedup: float) -> SimulatedSite:
    """Serve the simulated devices of the site in `data` on ephemeral ports, and point the
    links of `data` at them (write it as the site file a `Runtime` loads). With a speed-up,
    `[poll] time_scale` tells the service that meter time runs that much faster (the
    plausibility bound on energy per hour scales with it)."""
    from openprepay.core.app.simulation import SimulatedSite
    from openprepay.core.config.site import LinkType, parse_site
    from openprepay.core.contracts import SimulatorOptions

    if speedup > 0:
        data["poll"] = {**data.get("poll", {}), "time_scale": speedup}
    site = parse_site(data)
    options = SimulatorOptions(speedup=speedup, ephemeral_ports=True, timezone=site.info.timezone)
    sims = SimulatedSite(site, plugins, options)
    await sims.start()
    for link_id, (host, port) in sims.addresses.items():
        link = data["links"][link_id]
        if site.links[link_id].type is LinkType.SERIAL:
            link["device"] = f"socket://{host}:{port}"
        else:
            link["host"], link["port"] = host, port
    return sims


class ServerProcess:
    """A server process with its URL; `stop()`/`start()` let tests simulate outages."""

    def __init__(
        self, argv: list[str], url: str, health: str, ok: tuple[int, ...], log: Path
    ) -> None:
        self.argv, self.url, self.health, self.ok, self.log = argv, url, health, ok, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_http(self.url + self.health, self.ok, self.proc)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(
                f"{exc}; log: {self.log.read_text(errors='replace')[-2000:]}"
            ) from exc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """InfluxDB 1.x (Debian `influxdb`) with `/write`, `/query` and `/ping`."""
    binary = shutil.which("influxd")
    if binary is None:
        unavailable("influxd not installed (apt-get install influxdb)")
    root = tmp_path_factory.mktemp("influxdb")
    port = free_port()
    config = root / "influxdb.conf"
    config.write_text(
        f"""reporting-disabled = true
bind-address = "127.0.0.1:{free_port()}"
[meta]
  dir = "{root}/meta"
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
[monitor]
  store-enabled = false
"""
    )
    server = ServerProcess(
        [binary, "-config", str(config)],
        f"http://127.0.0.1:{port}",
        "/ping",
        (204,),
        root / "influxd.log",
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def victoria_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """VictoriaMetrics (Debian `victoria-metrics`): accepts /api/v2/write, exports data."""
    binary = shutil.which("victoria-metrics")
    if binary is None:
        unavailable("victoria-metrics not installed (apt-get install victoria-metrics)")
    root = tmp_path_factory.mktemp("victoria-metrics")
    port = free_port()
    server = ServerProcess(
        [
            binary,
            f"-storageDataPath={root}/data",
            f"-httpListenAddr=127.0.0.1:{port}",
            "-search.latencyOffset=0s",
            "-loggerLevel=ERROR",
        ],
        f"http://127.0.0.1:{port}",
        "/health",
        (200,),
        root / "vm.log",
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """URL of the PostgreSQL server (127.0.0.1:5432, trust auth), checked once."""
    url = os.environ.get("OPENPREPAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5):
            pass
    except Exception as exc:
        unavailable(f"PostgreSQL not reachable at {url}: {exc}")
    return url


@pytest.fixture(scope="session")
def postgres_database(postgres_server_url: str) -> Iterator[str]:
    """A throwaway database for this test session; its SQLAlchemy URL."""
    import psycopg

    name = f"openprepay_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = postgres_server_url.rsplit("/", 1)[0]
    yield f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database URL, once on SQLite and once on PostgreSQL (a schema of its own in
    the session's throwaway database): money tests run on both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'openprepay.db'}"
        return
    import sqlalchemy as sa

    base = request.getfixturevalue("postgres_database")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        engine.dispose()


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """The database at `db_url`, migrated to the current schema."""
    from openprepay.core.db import Database

    database = Database(db_url)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def check(db: Database) -> Callable[[], VerifyReport]:
    """Verify every ledger invariant; fail the test with the breaks if one does not hold."""
    from openprepay.core import ledger

    def run() -> VerifyReport:
        with db.read() as conn:
            report = ledger.verify(conn)
        assert report.ok, "\n".join(str(b) for b in report.breaks)
        return report

    return run


@pytest.fixture(scope="module")
def cli() -> tuple[Any, Any]:
    """The `openprepay` command group with every installed plugin, and its context object."""
    from openprepay.core.app.plugins import Plugins
    from openprepay.core.cli import CliContext, build_cli

    plugins = Plugins.load()
    return build_cli(plugins), CliContext(plugins)
