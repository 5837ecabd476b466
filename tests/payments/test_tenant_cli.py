"""`openprepay qr` (printable sheets of signed room links, one per floor), `openprepay
payer list|revoke`, and the room payment QR the bill export asks the plugins for."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from openprepay.core.config.site import load_site
from openprepay.core.db import Database
from openprepay.core.events import utcnow
from openprepay.core.operations import Operations
from openprepay.plugins.web import room_links as rl
from openprepay.plugins.web.cli import qr_command
from openprepay.plugins.web.settings import parse_web, site_folder

from .conftest import WEB, open_account, payment_site

SECRET = "qr-sheet-secret-0123456789abcdef0123"
OPENID = "oQr_cli_0123456789abcdefgh"


def _cli(plugins: Any) -> tuple[Any, Any]:
    from openprepay.core.cli import CliContext, OpenPrepayGroup
    from openprepay.core.cli.payer import payer_group

    group = OpenPrepayGroup("openprepay", commands=[payer_group, qr_command])
    return group, CliContext(plugins)


def _site(tmp_path: Path, **web: Any) -> Path:
    return payment_site(tmp_path, web={**WEB, "tenant_secret": SECRET, **web})


def test_qr_sheet_one_sheet_per_floor_with_valid_links(tmp_path: Path, plugins: Any) -> None:
    group, obj = _cli(plugins)
    site_file = _site(tmp_path)
    out = tmp_path / "sheet.html"
    result = CliRunner().invoke(group, ["qr", str(site_file), "--out", str(out)], obj=obj)
    assert result.exit_code == 0, result.output
    assert "2 room(s) on 1 sheet(s)" in result.output
    html = out.read_text()
    assert html.count('class="sheet"') == 1 and html.count("<svg") == 2
    assert re.findall(r'data-room="([^"]+)"', html) == ["A-101", "A-102"]
    # Only some rooms; an unknown room is refused naming it, nothing written.
    result = CliRunner().invoke(
        group, ["qr", str(site_file), "--rooms", "A-102", "--out", str(out)], obj=obj
    )
    assert result.exit_code == 0 and re.findall(r'data-room="([^"]+)"', out.read_text()) == [
        "A-102"
    ]
    other = tmp_path / "other.html"
    result = CliRunner().invoke(
        group, ["qr", str(site_file), "--rooms", "Z-9", "--out", str(other)], obj=obj
    )
    assert result.exit_code != 0 and "Z-9" in result.output and not other.exists()


def test_qr_without_a_tenant_secret_names_the_field(tmp_path: Path, plugins: Any) -> None:
    group, obj = _cli(plugins)
    site_file = payment_site(tmp_path, web=dict(WEB))
    result = CliRunner().invoke(
        group, ["qr", str(site_file), "--out", str(tmp_path / "s.html")], obj=obj
    )
    assert result.exit_code != 0 and "web.tenant_secret" in result.output


def test_the_room_payment_qr_hook_gives_the_rooms_signed_link(tmp_path: Path, plugins: Any) -> None:
    site = load_site(_site(tmp_path))
    image = plugins.room_payment_qr(site, "A-101")
    assert image is not None and image.startswith("data:image/svg+xml;base64,")
    assert plugins.room_payment_qr(site, "Z-9") is None
    (tmp_path / "plain").mkdir()
    plain = load_site(payment_site(tmp_path / "plain", web=dict(WEB)))
    assert plugins.room_payment_qr(plain, "A-101") is None
    # The link inside is this room's, signed for this site.
    settings = parse_web(site.sections["web"], [], site_folder(site))
    assert settings is not None and settings.tenant is not None
    token = rl.sign_room_link(settings.tenant, site.id, "A-101", utcnow())
    assert rl.read_room_link(settings.tenant, site.id, token, utcnow()) == "A-101"


def test_payer_list_and_revoke(tmp_path: Path, plugins: Any) -> None:
    group, obj = _cli(plugins)
    site_file = _site(tmp_path)
    site = load_site(site_file)
    db = Database.for_site(site)
    db.upgrade()
    ops = Operations(site, db, models=plugins.models)
    open_account(ops, db)
    binding = ops.bind_payer("wechat", OPENID, "A-101", actor="web:tenant")
    ops.writer.close()
    db.dispose()
    runner = CliRunner()
    out = runner.invoke(group, ["payer", "list", str(site_file)], obj=obj)
    assert out.exit_code == 0, out.output
    assert OPENID in out.output and "A-101" in out.output and "1 binding(s)" in out.output
    out = runner.invoke(group, ["payer", "revoke", str(site_file), str(binding.id)], obj=obj)
    assert out.exit_code == 0 and "revoked binding" in out.output
    out = runner.invoke(group, ["payer", "list", str(site_file)], obj=obj)
    assert "0 binding(s)" in out.output
    out = runner.invoke(group, ["payer", "list", str(site_file), "--all"], obj=obj)
    assert "1 binding(s)" in out.output and "by cli:" in out.output
    out = runner.invoke(group, ["payer", "revoke", str(site_file), str(binding.id)], obj=obj)
    assert out.exit_code != 0 and "already revoked" in out.output
