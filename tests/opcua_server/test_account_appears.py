"""An account opened while the service runs appears in the address space at once, not at the
next periodic read of every account (`[opcua] account_refresh_s`, an hour here)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import tomli_w

from openprepay.core.operations.lifecycle import NewAccount
from tests.conftest import until

from .conftest import SITE, ClientCert, load_plugins, open_accounts, start_site


async def test_a_new_account_appears_without_waiting_for_the_periodic_read(
    tmp_path: Path, client_certs: dict[str, ClientCert]
) -> None:
    plugins = load_plugins()
    data = copy.deepcopy(SITE)
    data["opcua"] = {**data["opcua"], "account_refresh_s": 3600.0}
    (tmp_path / "site.toml").write_text(tomli_w.dumps(data))
    open_accounts(tmp_path / "site.toml", plugins)
    site = await start_site(tmp_path, plugins, data, client_certs["trusted"])
    try:
        opcua = site.service
        space = opcua.space
        assert space is not None and opcua.server is not None
        await until(lambda: "A-101" in space.account_nodes)
        assert "A-103" not in space.account_nodes
        await asyncio.to_thread(
            site.ops.open_account,
            NewAccount("A-103", "A shop without a meter yet"),
            actor="test",
        )
        await until(lambda: "A-103" in space.account_nodes, timeout=10)
        node = opcua.server.get_node(space.account_nodes["A-103"])
        assert (await node.read_browse_name()).Name == "A-103"
    finally:
        await site.runtime.stop()
        await site.sims.stop()
