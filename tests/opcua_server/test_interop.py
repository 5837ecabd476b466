"""Interoperability with an independent OPC UA stack: node-opcua (tests/interop/client.js).

The node client connects with Basic256Sha256 SignAndEncrypt and a user name, browses from
the Objects folder to a room, finds the room's account, reads its balance, subscribes to
events on the Server object, calls TopUp and receives the LowBalance alarm the top-up
causes (the account goes from alarm level 2 to alarm level 1).

Skipped when node or the npm modules are missing (`./dev.sh setup` installs them); a
failure in CI.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from openprepay.opcua_server.pki import trust

from .conftest import PASSWORDS, OpcUaSite, make_client_cert

pytestmark = pytest.mark.asyncio(loop_scope="session")

INTEROP = Path(__file__).resolve().parents[1] / "interop"


def node_client() -> list[str]:
    from tests.conftest import unavailable

    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed (apt-get install nodejs npm)")
    if not (INTEROP / "node_modules" / "node-opcua-client").is_dir():
        unavailable("node-opcua is not installed: (cd tests/interop && npm install)")
    return [node, str(INTEROP / "client.js")]


async def billed_up_to_date(ops: Any, account: str) -> Any:
    """The account's snapshot once billing has caught up with its meter. The session's
    loop stands still while tests on other loops run (minutes on a slow box); the first
    polls after that bill the hours the simulated meter ran meanwhile, at 60 times real
    time, so a balance taken before them is soon stale. The meter is polled every 0.3 s
    and billed every 0.2 s: two snapshots 1.5 s apart that agree to 0.10 are current."""
    last = await asyncio.to_thread(ops.account_snapshot, account)
    for _ in range(40):
        await asyncio.sleep(1.5)
        now = await asyncio.to_thread(ops.account_snapshot, account)
        if abs(now.balance_fen - last.balance_fen) <= 10:
            return now
        last = now
    raise AssertionError(f"{account}'s balance kept moving: {last.balance_fen} fen")


async def test_node_opcua_browses_reads_tops_up_and_gets_the_low_balance_alarm(
    opcua_site: OpcUaSite, tmp_path: Path
) -> None:
    command = node_client()
    ops = opcua_site.ops
    uri = "urn:openprepay:tests:node-opcua"
    cert = make_client_cert(tmp_path, "node-client", uri)
    pem = tmp_path / "node-client.cert.pem"
    der = x509.load_der_x509_certificate(cert.cert.read_bytes())
    pem.write_bytes(der.public_bytes(serialization.Encoding.PEM))
    trust(opcua_site.pki, str(cert.cert))

    # Bring A-102 down to 3.00 (alarm level 2): a top-up of 10.00 then moves it to level 1.
    snapshot = await billed_up_to_date(ops, "A-102")
    if snapshot.balance_fen > 300:
        await asyncio.to_thread(
            ops.refund, "A-102", snapshot.balance_fen - 300, "interop-prepare", actor="test"
        )
    config = {
        "endpoint": opcua_site.url,
        "user": "cashier1",
        "password": PASSWORDS["cashier1"],
        "applicationUri": uri,
        "certificate": str(pem),
        "privateKey": str(cert.key),
        "pki": str(tmp_path / "node-pki"),
        "siteUri": "urn:openprepay:site:t",
        "site": "t",
        "building": "A",
        "floor": "1",
        "room": "A-102",
        "account": "A-102",
        "amount": 10.0,
        "reference": "interop-topup-1",
    }
    config_file = tmp_path / "interop.json"
    config_file.write_text(json.dumps(config))
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            str(config_file),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=INTEROP,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
        assert lines, f"no output; stderr: {err.decode()[-2000:]}"
        summary = lines[-1]
        assert summary.get("ok"), f"{summary}\nstderr: {err.decode()[-2000:]}"
        steps = {line["step"]: line for line in lines}
        assert steps["connected"]["mode"] == "SignAndEncrypt"
        assert steps["account"]["name"] == "A-102"
        assert steps["balance"]["status"] == "Good"
        assert summary["before"] == pytest.approx(3.0, abs=0.5)
        assert summary["after"] == pytest.approx(summary["before"] + 10.0, abs=0.5)
        event = summary["event"]
        assert event["SourceName"] == "A-102"
        assert event["AlarmLevel"] == 1
        assert event["Retain"] is True
        after = await asyncio.to_thread(ops.account_snapshot, "A-102")
        assert after.balance_fen >= snapshot.balance_fen - (snapshot.balance_fen - 300) + 1000 - 100
    finally:
        # Leave A-102 as the other tests expect it: well above its alarm thresholds.
        await asyncio.to_thread(ops.topup, "A-102", 30_00, "interop-restore", actor="test")
