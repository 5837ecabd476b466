"""A running service with its OPC UA server on a database of the test's choosing.

`served` (a fixture: import it into a test module) starts the OPC UA test site of
`tests/opcua` — simulated meters, the whole runtime, users of every role — with its ledger
at `db_url` (SQLite or PostgreSQL) and accounts A-101 and A-102 open. `cli` runs an
`openprepay` command against it in-process; `method` makes a raw OPC UA Call.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
import tomli_w
from asyncua import Client, ua
from click.testing import CliRunner, Result

from tests.opcua_server.conftest import (
    SITE,
    OpcUaSite,
    load_plugins,
    make_client_cert,
    open_accounts,
    start_site,
)


@pytest_asyncio.fixture
async def served(tmp_path: Path, db_url: str) -> AsyncIterator[OpcUaSite]:
    """The OPC UA test site with its ledger at `db_url`, accounts A-101 and A-102 open."""
    plugins = load_plugins()
    data: dict[str, Any] = copy.deepcopy(SITE)
    data["database"] = {"url": db_url}
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "site.toml").write_text(tomli_w.dumps(data))
    open_accounts(folder / "site.toml", plugins)
    cert = make_client_cert(tmp_path / "client", "cashier-screen")
    site = await start_site(folder, plugins, data, cert)
    try:
        yield site
    finally:
        await site.runtime.stop()
        await site.sims.stop()


async def cli(site: OpcUaSite, *args: str) -> Result:
    from openprepay.core.cli import CliContext, build_cli

    plugins = load_plugins()
    argv = [str(site.site_file) if a == "SITE" else a for a in args]
    return await asyncio.to_thread(
        CliRunner().invoke, build_cli(plugins), argv, obj=CliContext(plugins)
    )


async def method(
    client: Client, obj: str, name: str, *args: ua.Variant, owner: str = "AccountType"
) -> Any:
    """A raw Call on `obj` ("Account:A-101", "Meter:E-A-101"): the result with its status and
    diagnostics, never an exception."""
    t = await client.get_namespace_index("urn:openprepay:types")
    s = await client.get_namespace_index("urn:openprepay:site:t")
    request = ua.CallMethodRequest(
        ObjectId=ua.NodeId(obj, s),
        MethodId=ua.NodeId(f"{owner}/{name}", t),
        InputArguments=list(args),
    )
    (result,) = await client.uaclient.call([request])
    return result
