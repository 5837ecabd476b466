"""Signed room links and tenant sessions: what is accepted and what is refused (tampered,
expired, of a retired key version, of another site, a link used as a session)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from openprepay.core.errors import FieldError
from openprepay.plugins.web import room_links as rl
from openprepay.plugins.web.settings import parse_web
from openprepay.plugins.web.tenant_settings import TenantSettings

NOW = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)
SETTINGS = TenantSettings(b"0123456789abcdef0123456789abcdef", key_version=3, link_days=30)


def test_a_link_names_its_room_until_it_expires() -> None:
    token = rl.sign_room_link(SETTINGS, "site1", "A-101", NOW)
    assert rl.read_room_link(SETTINGS, "site1", token, NOW) == "A-101"
    assert rl.read_room_link(SETTINGS, "site1", token, NOW + timedelta(days=29)) == "A-101"
    with pytest.raises(rl.LinkRefused, match="expired"):
        rl.read_room_link(SETTINGS, "site1", token, NOW + timedelta(days=30, seconds=1))


def _flip(text: str, at: int) -> str:
    c = "A" if text[at] != "A" else "B"
    return text[:at] + c + text[at + 1 :]


@pytest.mark.parametrize("at", [0, 5, 20, -3, -1])
def test_a_tampered_link_is_refused(at: int) -> None:
    token = rl.sign_room_link(SETTINGS, "site1", "A-101", NOW)
    with pytest.raises(rl.LinkRefused):
        rl.read_room_link(SETTINGS, "site1", _flip(token, at), NOW)


def test_another_rooms_payload_with_this_rooms_signature_is_refused() -> None:
    mine = rl.sign_room_link(SETTINGS, "site1", "A-101", NOW)
    theirs = rl.sign_room_link(SETTINGS, "site1", "A-102", NOW)
    spliced = theirs.split(".")[0] + "." + mine.split(".")[1]
    with pytest.raises(rl.LinkRefused, match="signature"):
        rl.read_room_link(SETTINGS, "site1", spliced, NOW)


def test_after_a_rotation_old_links_are_refused() -> None:
    token = rl.sign_room_link(SETTINGS, "site1", "A-101", NOW)
    rotated = dataclasses.replace(SETTINGS, key_version=4)
    with pytest.raises(rl.LinkRefused, match="retired"):
        rl.read_room_link(rotated, "site1", token, NOW)
    other_secret = dataclasses.replace(SETTINGS, secret=b"x" * 32)
    with pytest.raises(rl.LinkRefused, match="signature"):
        rl.read_room_link(other_secret, "site1", token, NOW)


def test_another_sites_link_and_garbage_are_refused() -> None:
    token = rl.sign_room_link(SETTINGS, "site2", "A-101", NOW)
    with pytest.raises(rl.LinkRefused, match="another site"):
        rl.read_room_link(SETTINGS, "site1", token, NOW)
    for junk in ("", "abc", "a.b.c", "!!!.???", "x" * 5000):
        with pytest.raises(rl.LinkRefused):
            rl.read_room_link(SETTINGS, "site1", junk, NOW)


def test_a_session_is_not_a_link_and_back() -> None:
    token = rl.sign_room_link(SETTINGS, "site1", "A-101", NOW)
    with pytest.raises(rl.LinkRefused):
        rl.open_session(SETTINGS, "site1", token, NOW)
    session = rl.new_session(SETTINGS, "site1", "A-101", NOW, openid="oAbc123456")
    sealed = rl.seal_session(SETTINGS, session)
    assert rl.open_session(SETTINGS, "site1", sealed, NOW) == session
    with pytest.raises(rl.LinkRefused):
        rl.read_room_link(SETTINGS, "site1", sealed, NOW)
    later = NOW + timedelta(hours=SETTINGS.session_hours, seconds=1)
    with pytest.raises(rl.LinkRefused, match="expired"):
        rl.open_session(SETTINGS, "site1", sealed, later)
    with pytest.raises(rl.LinkRefused):
        rl.open_session(SETTINGS, "site1", _flip(sealed, 10), NOW)


def test_form_and_state_tokens_belong_to_their_session() -> None:
    a = rl.seal_session(SETTINGS, rl.new_session(SETTINGS, "s", "A-101", NOW))
    b = rl.seal_session(SETTINGS, rl.new_session(SETTINGS, "s", "A-102", NOW))
    assert rl.form_token(SETTINGS, a) != rl.form_token(SETTINGS, b)
    assert len(rl.oauth_state(SETTINGS, a)) <= 128
    assert rl.oauth_state(SETTINGS, a) != rl.form_token(SETTINGS, a)


WEB = {"bind": "127.0.0.1", "port": 0, "public_base_url": "https://pay.example.com"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"tenant_secret": "short"}, "web.tenant_secret"),
        ({"tenant_secret": "s" * 40, "tenant_secret_file": "x"}, "web.tenant_secret"),
        ({"tenant_secret_file": "missing.txt"}, "web.tenant_secret_file"),
        ({"tenant_session_hours": 12}, "web.tenant_secret"),
        ({"tenant_secret": "s" * 40, "tenant_key_version": 0}, "web.tenant_key_version"),
        ({"tenant_secret": "s" * 40, "tenant_session_hours": "12"}, "web.tenant_session_hours"),
        ({"tenant_secret": "s" * 40, "tenant_presets": [0]}, "web.tenant_presets"),
        ({"tenant_secret": "s" * 40, "wechat_oauth_url": "ftp://x"}, "web.wechat_oauth_url"),
        (
            {"tenant_secret": "s" * 40, "wechat_app_secret_file": "nope"},
            "web.wechat_app_secret_file",
        ),
    ],
)
def test_bad_tenant_keys_name_their_field(
    tmp_path: Path, changes: dict[str, object], field: str
) -> None:
    errors: list[FieldError] = []
    assert parse_web({**WEB, **changes}, errors, tmp_path) is None
    assert field in [e.path for e in errors], errors


def test_the_secret_from_a_file_next_to_the_site_file(tmp_path: Path) -> None:
    (tmp_path / "tenant.key").write_text("k" * 64 + "\n")
    (tmp_path / "app.secret").write_text("appsecret\n")
    errors: list[FieldError] = []
    web = {**WEB, "tenant_secret_file": "tenant.key", "wechat_app_secret_file": "app.secret"}
    settings = parse_web(web, errors, tmp_path)
    assert errors == [] and settings is not None and settings.tenant is not None
    assert settings.tenant.secret == b"k" * 64
    assert settings.tenant.wechat_app_secret == "appsecret"
    assert parse_web(dict(WEB), [], tmp_path).tenant is None  # no secret: no tenant page
