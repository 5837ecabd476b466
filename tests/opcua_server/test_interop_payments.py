"""Interoperability of the Payments object with node-opcua (tests/interop/payments.js): the
client browses OpenPrepay/Payments, reads its figures, subscribes to events on the Server
object and receives the PaymentConflictAlarmType a mismatched notification raises.

Skipped when node or the npm modules are missing (`./dev.sh setup` installs them)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from openprepay.core.contracts import PaymentRequest
from openprepay.opcua_server.pki import trust
from tests.payments.double import DoubleProvider

from .conftest import PASSWORDS, OpcUaSite, make_client_cert
from .test_interop import INTEROP, node_client

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_node_opcua_reads_payments_and_gets_the_conflict_alarm(
    opcua_site: OpcUaSite, tmp_path: Path
) -> None:
    command = node_client()
    command[-1] = str(INTEROP / "payments.js")
    uri = "urn:openprepay:tests:node-opcua-payments"
    cert = make_client_cert(tmp_path, "node-payments", uri)
    pem = tmp_path / "node-payments.cert.pem"
    der = x509.load_der_x509_certificate(cert.cert.read_bytes())
    pem.write_bytes(der.public_bytes(serialization.Encoding.PEM))
    trust(opcua_site.pki, str(cert.cert))

    ops = opcua_site.ops
    provider = DoubleProvider()
    ops.use_providers([provider])
    proc: Any = None
    try:
        order = await asyncio.to_thread(
            ops.open_payment, "A-101", 1500, "test", "native", actor="test"
        )
        await provider.create(
            PaymentRequest(
                order.out_trade_no, 1500, "CNY", "x", order.expires_at, "native", "https://x/n"
            )
        )
        config = {
            "endpoint": opcua_site.url,
            "user": "viewer1",
            "password": PASSWORDS["viewer1"],
            "applicationUri": uri,
            "certificate": str(pem),
            "privateKey": str(cert.key),
            "pki": str(tmp_path / "node-pki"),
            "siteUri": "urn:openprepay:site:t",
            "outTradeNo": order.out_trade_no,
        }
        config_file = tmp_path / "payments.json"
        config_file.write_text(json.dumps(config))
        proc = await asyncio.create_subprocess_exec(
            *command,
            str(config_file),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=INTEROP,
        )
        assert proc.stdout is not None and proc.stderr is not None
        lines: list[dict[str, Any]] = []

        async def next_line() -> dict[str, Any]:
            while True:
                raw = await asyncio.wait_for(proc.stdout.readline(), 120)
                if not raw:
                    err = (await proc.stderr.read()).decode()[-2000:]
                    raise AssertionError(f"node client ended: {lines[-1:]}\nstderr: {err}")
                if raw.startswith(b"{"):
                    lines.append(json.loads(raw))
                    return lines[-1]

        while (await next_line())["step"] not in ("subscribed", "summary"):
            pass
        assert lines[-1]["step"] == "subscribed", lines[-1]
        notice = provider.pay(order.out_trade_no, amount_fen=1)
        await asyncio.to_thread(ops.apply_notice, notice, actor="web:test")
        while (await next_line())["step"] != "summary":
            pass
        await asyncio.wait_for(proc.wait(), 30)
        summary = lines[-1]
        assert summary.get("ok"), summary
        steps = {line["step"]: line for line in lines}
        assert steps["payments"]["type"] == "PaymentsType"
        figures = summary["figures"]
        assert figures["OrdersCreated"]["status"] == "Good"
        assert isinstance(figures["OrdersCreated"]["value"], int)
        assert figures["LastReconciliationTime"]["status"] == "BadWaitingForInitialData"
        event = summary["event"]
        assert event["AccountId"] == "A-101" and event["Channel"] == "test"
        assert event["AmountFen"] == 1500 and "amount 1 fen" in event["Reason"]
        assert event["Retain"] is True and event["SourceName"] == f"payment {order.out_trade_no}"
    finally:
        ops.use_providers([])
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
