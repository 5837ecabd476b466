"""`openprepay report payments`: online payment orders per channel — credited, open,
conflicts (paid at the provider, not credited) — on a site's database."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from openprepay.core.config.site import load_site
from openprepay.core.contracts import PaymentRequest
from openprepay.core.db import Database
from openprepay.core.operations import Operations

from .conftest import open_account, payment_site
from .double import DoubleProvider


def test_online_payments_by_channel(tmp_path: Path, plugins: Any) -> None:
    from openprepay.core.cli import CliContext, OpenPrepayGroup
    from openprepay.core.cli.billing.report import report_group

    site_file = payment_site(tmp_path)
    site = load_site(site_file)
    db = Database.for_site(site)
    db.upgrade()
    provider = DoubleProvider()
    ops = Operations(site, db, models=plugins.models)
    ops.use_providers([provider])
    open_account(ops, db)

    def opened(fen: int) -> str:
        o = ops.open_payment("A-101", fen, "test", "native", actor="test:payer")
        request = PaymentRequest(o.out_trade_no, fen, "CNY", "x", o.expires_at, "native", "u")
        asyncio.run(provider.create(request))
        return o.out_trade_no

    ops.apply_notice(provider.pay(opened(1234)), actor="web:test")
    ops.apply_notice(provider.pay(opened(2000)), actor="web:test")
    ops.apply_notice(provider.pay(opened(700), amount_fen=1), actor="web:test")
    opened(500)
    ops.writer.close()
    db.dispose()

    group = OpenPrepayGroup("openprepay", commands=[report_group])
    span = ("--from", "2025-01-01", "--to", "2035-12-31", "--by", "range")
    out = CliRunner().invoke(
        group, ["report", "payments", str(site_file), *span, "--out", "-"], obj=CliContext(plugins)
    )
    assert out.exit_code == 0, out.output
    rows = list(csv.reader(io.StringIO(out.output.lstrip("\ufeff"))))
    header = next(r for r in rows if "conflicts CNY" in r)
    data = [dict(zip(header, r, strict=False)) for r in rows if len(r) == len(header)]
    (test,) = [r for r in data if r["channel"] == "test"]
    assert test["orders"] == "4" and test["credited"] == "2"
    assert float(test["credited CNY"]) == 32.34
    assert test["open"] == "1" and test["conflicts"] == "1"
    assert float(test["conflicts CNY"]) == 7.0
