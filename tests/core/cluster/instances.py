"""Instances of the service as real processes (`openprepay run SITE`), each with its own
site file (its `[cluster] instance_id`, its relays), all on one PostgreSQL database."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import tomli_w

from openprepay.core.cluster import lease
from openprepay.core.db import Database
from tests.conftest import until
from tests.core.prepay.conftest import site_data

OPENPREPAY = str(Path(sys.executable).parent / "openprepay")

#: Short leases so a test takes seconds; margin well above the link timeout (0.3 s).
CLUSTER = {"lease_ttl_s": 4.0, "heartbeat_s": 0.5, "margin_s": 1.5}


def cluster_site_data() -> dict[str, Any]:
    """The prepay tests' site, with a LOCAL meter that uses no energy: its balance then is
    exactly the money delivered to it, however long a test runs."""
    data = site_data()
    data["devices"]["E-102"]["options"]["sim_load_kw"] = 0.0
    return data


def instance_site(
    tmp_path: Path,
    name: str,
    db_url: str,
    gateway_port: int,
    gateway_host: str = "127.0.0.1",
    **cluster: Any,
) -> Path:
    data = cluster_site_data()
    data["links"]["gw"]["port"] = gateway_port
    data["links"]["gw"]["host"] = gateway_host
    data["database"] = {"url": db_url}
    data["cluster"] = {"instance_id": name, **CLUSTER, **cluster}
    data["prepay"]["engine"]["instance"] = name
    folder = tmp_path / name
    folder.mkdir(parents=True)
    path = folder / "site.toml"
    path.write_text(tomli_w.dumps(data))
    return path


class Instance:
    """One `openprepay run` process and its log."""

    def __init__(self, name: str, site_file: Path, prefix: tuple[str, ...] = ()) -> None:
        self.name = name
        self.site_file = site_file
        #: Run through this first (`ip netns exec NS`: in a network namespace).
        self.prefix = prefix
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.prefix,
            OPENPREPAY,
            "--log-level",
            "INFO",
            "run",
            str(self.site_file),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._drain())
        await until(lambda: self.logged("prepayment engine running"), 60)

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.log)

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace"))

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader
            self._reader = None


def owner_of(db: Database, link_id: str = "gw") -> tuple[str | None, int]:
    with db.read() as conn:
        for row in lease.leases(conn):
            if row.name == link_id:
                live = row.left_s is not None and row.left_s > 0
                return (row.owner if live else None), row.epoch
    return None, 0
