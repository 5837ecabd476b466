"""`openprepay payments list|show` on a site's database (as an operator reads them)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from openprepay.core.config.site import load_site
from openprepay.core.db import Database
from openprepay.core.operations import Operations

from .conftest import open_account, payment_site
from .double import DoubleProvider


def _cli(plugins: Any) -> tuple[Any, Any]:
    """The two commands alone: `build_cli` registers plugin commands once per process, with
    whatever plugins the first caller had (these tests run without OPC UA and historian)."""
    from openprepay.core.cli import CliContext, OpenPrepayGroup
    from openprepay.core.cli.devices import check_command
    from openprepay.core.cli.payments import payments_group

    group = OpenPrepayGroup("openprepay", commands=[payments_group, check_command])
    return group, CliContext(plugins)


def test_list_and_show(tmp_path: Path, plugins: Any) -> None:
    group, obj = _cli(plugins)
    site_file = payment_site(tmp_path)
    site = load_site(site_file)
    db = Database.for_site(site)
    db.upgrade()
    provider = DoubleProvider()
    ops = Operations(site, db, models=plugins.models)
    ops.use_providers([provider])
    open_account(ops, db)
    paid = ops.open_payment("A-101", 1234, "test", "native", actor="test:payer")
    unpaid = ops.open_payment("A-101", 500, "test", "native", actor="test:payer")
    from openprepay.core.contracts import PaymentRequest

    asyncio.run(
        provider.create(
            PaymentRequest(paid.out_trade_no, 1234, "CNY", "x", paid.expires_at, "native", "u")
        )
    )
    ops.apply_notice(provider.pay(paid.out_trade_no), actor="test")
    ops.writer.close()
    db.dispose()
    runner = CliRunner()

    out = runner.invoke(group, ["payments", "list", str(site_file)], obj=obj)
    assert out.exit_code == 0, out.output
    assert paid.out_trade_no in out.output and unpaid.out_trade_no in out.output
    assert "CREDITED" in out.output and "12.34" in out.output and "2 order(s)" in out.output

    out = runner.invoke(group, ["payments", "list", str(site_file), "--state", "created"], obj=obj)
    assert out.exit_code == 0 and "1 order(s)" in out.output and unpaid.out_trade_no in out.output

    out = runner.invoke(group, ["payments", "show", str(site_file), paid.out_trade_no], obj=obj)
    assert out.exit_code == 0, out.output
    assert "state        CREDITED" in out.output and "transaction  T" in out.output
    assert "last notice" in out.output and "times in site time" in out.output

    out = runner.invoke(group, ["payments", "show", str(site_file), "OPnope"], obj=obj)
    assert out.exit_code == 1 and "out_trade_no: unknown payment order 'OPnope'" in out.output


def test_check_names_the_payments_and_web_fields(tmp_path: Path, plugins: Any) -> None:
    import tomli_w

    from tests.core.prepay.conftest import site_data

    group, obj = _cli(plugins)
    data = site_data(
        payments={"minimum": "0.001", "prefix": "toolong-prefix", "poll_s": 0},
        web={"bind": "localhost", "port": 70000, "public_base_url": "ftp://x?y=1", "colour": 1},
    )
    site_file = tmp_path / "bad.toml"
    site_file.write_text(tomli_w.dumps(data))
    out = CliRunner().invoke(group, ["check", str(site_file)], obj=obj)
    assert out.exit_code == 2, out.output
    for field in (
        "payments.minimum",
        "payments.prefix",
        "payments.poll_s",
        "web.bind",
        "web.port",
        "web.public_base_url",
        "web.colour",
    ):
        assert field in out.output, (field, out.output)


def test_the_rate_limit_is_per_client() -> None:
    from openprepay.plugins.web.limits import RateLimiter

    now = [0.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # another client has its own bucket
    now[0] += 20.0  # a third of a minute: one request back
    assert limiter.allow("a") and not limiter.allow("a")
