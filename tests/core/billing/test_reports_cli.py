"""`openprepay report revenue --basis`, `report revenue-bases` and `report channels` on a
site file: January 2025 billed now lands in January by service period and in today's month
by posting date; a bad basis names the option and exits non-zero."""

from __future__ import annotations

import csv
import io

from .test_cli import run, site_file  # noqa: F401  (fixtures: the CLI on a site file)

SPAN = ("--from", "2025-01-01", "--to", "2030-12-31")


def _csv(text: str) -> list[dict[str, str]]:
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    header = rows[0]
    return [dict(zip(header, r, strict=False)) for r in rows[1:] if len(r) == len(header)]


def test_revenue_bases_and_channels_from_the_command_line(run):  # noqa: F811
    for at, main, a101, a102 in (
        ("2025-01-01 00:00", 1000, 100, 200),
        ("2025-02-01 00:00", 1073, 150, 220),
    ):
        run("billing", "reading", "SITE", "M-A", "--at", at, "--value", str(main))
        run("billing", "reading", "SITE", "E-A-101", "--at", at, "--value", str(a101))
        run("billing", "reading", "SITE", "E-A-102", "--at", at, "--value", str(a102))
    run("billing", "apportion", "SITE", "--period", "2025-01")  # 3 kWh of loss × 0.60
    run("bill", "draft", "SITE", "--period", "2025-01")
    run("bill", "confirm", "SITE", "--period", "2025-01")  # 50 kWh × 0.50
    run("topup", "SITE", "A-102", "50.00", "--ref", "wx-1", "--channel", "wechat")
    run("topup", "SITE", "A-102", "20.00", "--ref", "cash-1")

    service = _csv(
        run("report", "revenue", "SITE", *SPAN, "--basis", "service", "--out", "-").output
    )
    jan = next(r for r in service if r["month"] == "2025-01")
    assert (jan["electricity"], jan["common area"], jan["total"]) == ("25.00", "1.80", "26.80")
    posting = _csv(run("report", "revenue", "SITE", *SPAN, "--out", "-").output)
    assert next(r for r in posting if r["month"] == "2025-01")["total"] == "0.00"
    assert posting[-1]["total"] == service[-1]["total"] == "26.80"  # the total rows
    screen = run("report", "revenue", "SITE", *SPAN, "--basis", "service", "--by", "range")
    assert "by service period" in screen.output and "Basis: service period" in screen.output

    bases = _csv(run("report", "revenue-bases", "SITE", *SPAN, "--out", "-").output)
    jan = next(r for r in bases if r["month"] == "2025-01")
    assert (jan["by posting date"], jan["in"], jan["by service period"]) == (
        "0.00",
        "26.80",
        "26.80",
    )
    assert "common area for 2025-01 posted" in jan["what moved"]

    channels = _csv(run("report", "channels", "SITE", *SPAN, "--by", "range", "--out", "-").output)
    by_channel = {r["channel"]: r for r in channels if r["channel"]}
    assert by_channel["WeChat"]["top-ups CNY"] == "50.00"
    assert by_channel["cash"]["net CNY"] == "20.00"

    bad = run("report", "revenue", "SITE", *SPAN, "--basis", "accrual", ok=False)
    assert "--basis" in bad.output and "posting" in bad.output
