"""`openprepay payments refund|refunds|reconcile|reconciliations` on a site's database."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from openprepay.core import ledger
from openprepay.core.config.site import load_site
from openprepay.core.contracts import PaymentRequest
from openprepay.core.db import Database
from openprepay.core.operations import Operations

from .conftest import open_account
from .double import DoubleProvider


def _cli(plugins: Any) -> tuple[Any, Any]:
    from openprepay.core.cli import CliContext, OpenPrepayGroup
    from openprepay.core.cli.payments import payments_group, register

    group = OpenPrepayGroup("openprepay")
    register(group)
    assert group.commands["payments"] is payments_group
    return group, CliContext(plugins)


def test_refund_reconcile_and_their_lists(tmp_path: Path, plugins: Any) -> None:
    group, obj = _cli(plugins)
    import tomli_w

    from tests.core.prepay.conftest import site_data

    from .conftest import PAYMENTS

    site_file = tmp_path / "site.toml"
    data = site_data(payments={**PAYMENTS, "test": {"key": "k" * 32}})
    site_file.write_text(tomli_w.dumps(data))
    site = load_site(site_file)
    db = Database.for_site(site)
    db.upgrade()
    provider = DoubleProvider()
    ops = Operations(site, db, models=plugins.models)
    ops.use_providers([provider])
    open_account(ops, db)
    order = ops.open_payment("A-101", 5000, "test", "native", actor="test:payer")
    no = order.out_trade_no
    asyncio.run(
        provider.create(PaymentRequest(no, 5000, "CNY", "x", order.expires_at, "native", "u"))
    )
    ops.apply_notice(provider.pay(no), actor="test")
    ops.writer.close()
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(group, ["payments", args[0], str(site_file), *args[1:]], obj=obj)

    out = run("refund", no, "60.00", "--reason", "moved out")
    assert out.exit_code == 1 and "amount: at most 50.00" in out.output, out.output
    out = run("refund", no, "20.00", "--reason", "moved out", "--refund-no", "R-1")
    assert out.exit_code == 0, out.output
    assert "refund R-1: 20.00" in out.output and "REQUESTED" in out.output
    assert "energy balance 30.00" in out.output
    out = run("refund", no, "20.00", "--reason", "moved out", "--refund-no", "R-1")
    assert out.exit_code == 0 and "nothing changed" in out.output
    out = run("refunds")
    assert out.exit_code == 0 and "R-1" in out.output and "1 refund(s)" in out.output
    out = run("show", no)  # the order shows its refunds
    assert out.exit_code == 0 and "refunds      1" in out.output, out.output
    assert "R-1" in out.output and "REQUESTED" in out.output and "moved out" in out.output

    out = run("reconcile")  # yesterday: nothing there, nothing here
    assert out.exit_code == 0, out.output
    assert "test" in out.output and ": OK" in out.output
    today = datetime.now(site.info.tz).date()
    # The CLI's own provider has no record of the payment: credited here, not paid there.
    out = run("reconcile", "--day", today.isoformat(), "--channel", "test")
    assert out.exit_code == 1, out.output
    assert "DIFFERENCES" in out.output and "credited_not_paid" in out.output and no in out.output
    out = run("reconcile", "--channel", "nope")
    assert out.exit_code == 2 and "--channel" in out.output
    out = run("reconcile", "--day", "yesterday")
    assert out.exit_code == 2 and "YYYY-MM-DD" in out.output
    out = run("reconciliations")
    assert out.exit_code == 0 and "2 day(s)" in out.output
    assert today.isoformat() in out.output
    assert (today - timedelta(days=1)).isoformat() in out.output
    with db.read() as conn:
        assert ledger.verify(conn).ok
        assert ledger.balances(conn, "A-101").energy_fen == 3000
    db.dispose()
