"""§8: logs and files an attacker can shape.

- A Disconnect reason with a newline used to forge a whole log line (the arbiter logs the
  reason of every command it sends); every record is now one line whatever its fields hold.
- The ledger (SQLite with its -wal and -shm), the embedded history store and the spool were
  created with the umask's permissions (0644: readable by every user); now 0600 in 0700.
- `opcua users add --password P` put the password on the command line; it is refused, and
  no command of the CLI takes a secret as an argument.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy as sa
from asyncua import ua
from click.testing import CliRunner

from openprepay.core.config.site import parse_site
from openprepay.core.db import Database, read_database_config
from openprepay.core.errors import ConfigError
from openprepay.core.logs import setup_logging
from tests.conftest import until
from tests.core.conftest import SITE_DATA
from tests.core.served import method, served
from tests.opcua_server.conftest import OpcUaSite

__all__ = ["served"]  # the fixture, imported for pytest

HOSTILE = (
    "tenant asked\n2026-01-01T00:00:00.000Z INFO    openprepay.ledger top-up 999.00 credited"
    "\r\x1b[2J\x1b[31mcleared\u202etxt.exe\u2028next"
)
RECORD_START = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR)")


@pytest.fixture
def log_stream() -> Iterator[Any]:
    """The product's logging into a buffer; the root handlers are put back afterwards."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    buffer = io.StringIO()

    def use(fmt: str = "text") -> io.StringIO:
        buffer.seek(0)
        buffer.truncate()
        setup_logging("INFO", fmt, buffer)
        return buffer

    yield use
    root.handlers[:] = saved
    root.setLevel(level)


def test_a_record_is_one_line_whatever_its_fields_hold(log_stream) -> None:
    out = log_stream("text")
    log = logging.getLogger("openprepay.test")
    log.info("command TRIP sent to meter E-1 (%s)", HOSTILE, extra={"meter": "E\n1"})
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        log.exception("failed for %s", "A-101", extra={"account": "A-101\x1b[0m"})
    lines = out.getvalue().splitlines()
    records = [ln for ln in lines if not ln.startswith("  ")]
    assert len(records) == 2 and all(RECORD_START.match(ln) for ln in records), lines
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()
    assert (
        "(tenant asked\\n2026-01-01T00:00:00.000Z INFO    openprepay.ledger top-up 999.00 "
        "credited\\r\\x1b[2J\\x1b[31mcleared\\u202etxt.exe\\u2028next) meter=E\\n1"
    ) in records[0]
    assert records[1].endswith("account=A-101\\x1b[0m")
    assert lines[2:] and all(ln.startswith("  ") for ln in lines[2:])  # the traceback

    out = log_stream("json")
    log.info("reason %s", HOSTILE, extra={"meter": "E\u00851"})
    (line,) = out.getvalue().splitlines()
    doc = json.loads(line)
    assert doc["msg"] == f"reason {HOSTILE}" and doc["meter"] == "E\u00851"  # exact, once decoded


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_disconnect_reason_cannot_forge_a_log_line(served: OpcUaSite, log_stream) -> None:
    out = log_stream("text")
    async with served.connect("operator1") as client:
        result = await method(
            client,
            "Meter:E-A-101",
            "Disconnect",
            ua.Variant(HOSTILE, ua.VariantType.String),
            owner="MeterType",
        )
        assert result.StatusCode.is_good(), result
    await until(lambda: "command TRIP sent to meter E-A-101" in out.getvalue(), timeout=30)
    text = out.getvalue()
    for line in text.splitlines():
        assert RECORD_START.match(line) or line.startswith("  "), line
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    sent = next(ln for ln in text.splitlines() if "command TRIP sent to meter E-A-101" in ln)
    assert "(tenant asked\\n2026-01-01T00:00:00.000Z INFO    openprepay.ledger top-up" in sent
    assert not any(ln.startswith("2026-01-01T00:00:00.000Z") for ln in text.splitlines())


# -- files -----------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def test_the_sqlite_ledger_and_its_wal_are_the_owners_only(tmp_path: Path, umask) -> None:
    path = tmp_path / "var" / "deeper" / "openprepay.db"
    db = Database(f"sqlite:///{path}")
    try:
        db.upgrade()
        with db.begin() as conn:
            conn.execute(sa.text("CREATE TABLE probe (x INTEGER)"))
            conn.execute(sa.text("INSERT INTO probe VALUES (1)"))
        wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
        assert wal.exists() and shm.exists()
        assert {p.name: mode(p) for p in (path, wal, shm)} == {
            p.name: 0o600 for p in (path, wal, shm)
        }
        assert mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700
    finally:
        db.dispose()


def test_an_existing_ledger_readable_by_others_is_reported(tmp_path: Path, caplog) -> None:
    path = tmp_path / "shared.db"
    path.touch()
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="openprepay.files"):
        Database(f"sqlite:///{path}").dispose()
    assert f"{path} is readable by other users (mode 644); restrict it: chmod 600" in caplog.text
    assert mode(path) == 0o644  # reported, not changed behind the operator's back


def test_history_store_and_spool_are_the_owners_only(tmp_path: Path, umask) -> None:
    import datetime as dt

    from openprepay.core.model import DeviceModel, MeterKind, PointSpec, Sample
    from openprepay.historian.config import DropPolicy
    from openprepay.historian.embedded import EmbeddedStore
    from openprepay.historian.lineprotocol import Chunk
    from openprepay.historian.spool import Spool

    store = EmbeddedStore(tmp_path / "history" / "history.sqlite").open()
    model = DeviceModel("t.m", "t", "m", MeterKind.ELECTRIC, "", (PointSpec("p", "kWh", "p"),))
    store.store([Sample("E-1", model, dt.datetime.now(dt.UTC), {"p": 1.0})])
    files = [store.path, Path(f"{store.path}-wal"), Path(f"{store.path}-shm")]
    assert {str(p): mode(p) for p in files} == {str(p): 0o600 for p in files}
    assert mode(tmp_path / "history") == 0o700
    store.close()

    spool = Spool(tmp_path / "spool", 10**7, DropPolicy.DROP_OLDEST).open()
    data = b"m,k=v f=1i 1000\n"
    spool.append([Chunk(data, 1, 1, 1000, 1000)])
    spool.ack(spool.peek(10))  # writes the cursor
    spool.quarantine.add_replay([Chunk(data, 1, 1, 1000, 1000)])  # a file in replay/
    spool.close()
    folders = [tmp_path / "spool", *[p for p in (tmp_path / "spool").rglob("*") if p.is_dir()]]
    files = [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]
    assert len(files) >= 3, files
    assert {str(p): mode(p) for p in folders} == {str(p): 0o700 for p in folders}
    assert {str(p): mode(p) for p in files} == {str(p): 0o600 for p in files}


# -- passwords -------------------------------------------------------------------------------


def _opcua_site(tmp_path: Path) -> Path:
    import tomli_w

    data = {**SITE_DATA, "opcua": {"port": 0}}
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def _users(site: Path) -> dict[str, Any]:
    users = site.parent / "opcua" / "users.json"
    return {u["name"]: u for u in json.loads(users.read_text())["users"]} if users.exists() else {}


def _password_is(site: Path, name: str, password: str) -> bool:
    from openprepay.opcua_server.users import hash_password, load_users

    record = load_users(site.parent / "opcua" / "users.json")[name]
    digest = hash_password(password, bytes.fromhex(record.salt), record.n, record.r, record.p)
    return digest.hex() == record.hash


def test_no_password_is_taken_as_a_command_line_argument(cli, tmp_path: Path) -> None:
    group, obj = cli
    site = _opcua_site(tmp_path)
    add = ["opcua", "users", "add", str(site), "alice", "--role", "cashier"]
    refused = CliRunner().invoke(group, [*add, "--password", "alice-secret"], obj=obj)
    assert refused.exit_code == 2
    assert "a password on the command line is visible to every user" in refused.output
    assert "--password-env VAR or --password-file FILE" in refused.output
    assert "alice" not in _users(site)

    by_env = CliRunner().invoke(
        group, [*add, "--password-env", "ALICE_PW"], obj=obj, env={"ALICE_PW": "alice-secret"}
    )
    assert by_env.exit_code == 0, by_env.output
    secret = tmp_path / "bob.secret"
    secret.write_text("bob-secret-1\n")
    by_file = CliRunner().invoke(
        group,
        ["opcua", "users", "add", str(site), "bob", "--password-file", str(secret)],
        obj=obj,
    )
    assert by_file.exit_code == 0, by_file.output
    prompted = CliRunner().invoke(
        group,
        ["opcua", "users", "add", str(site), "carol"],
        obj=obj,
        input="carol-secret\ncarol-secret\n",
    )
    assert prompted.exit_code == 0, prompted.output
    assert {"alice", "bob", "carol"} <= set(_users(site))

    assert _password_is(site, "bob", "bob-secret-1")  # the line break is not part of it
    assert _password_is(site, "alice", "alice-secret")
    assert _password_is(site, "carol", "carol-secret")


def test_no_command_has_an_option_that_takes_a_secret(cli) -> None:
    group, _ = cli
    secret = re.compile(r"pass(word)?|secret|token|api.?key", re.IGNORECASE)
    found = []

    def walk(command: click.Command, path: str) -> None:
        for param in command.params:
            if not isinstance(param, click.Option) or param.is_flag:
                continue
            for name in param.opts:
                if secret.search(name) and not name.endswith(("-env", "-file")):
                    refuses = param.hidden and not param.expose_value
                    if not refuses:
                        found.append(f"{path} {name}")
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")

    walk(group, "openprepay")
    assert found == []


def test_the_postgres_password_can_come_from_the_environment(monkeypatch) -> None:
    site = parse_site(
        {
            **SITE_DATA,
            "database": {"url": "postgresql://ledger@db.internal/op", "password_env": "OP_DB_PW"},
        }
    )
    monkeypatch.setenv("OP_DB_PW", "s3cret:/@x")
    config = read_database_config(site)
    assert sa.make_url(config.url).password == "s3cret:/@x"
    monkeypatch.delenv("OP_DB_PW")
    with pytest.raises(ConfigError, match=r"database\.password_env: environment variable OP_DB_PW"):
        read_database_config(site)
