"""The [opcua] section, the users file and the password checks (no server needed)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from openprepay.core.config.site import load_site, parse_site
from openprepay.core.errors import ConfigError
from openprepay.opcua_server.config import DEFAULT_POLICIES, check_config, read_config
from openprepay.opcua_server.users import (
    Role,
    UserDirectory,
    UserError,
    add_user,
    load_users,
    remove_user,
)

from .conftest import load_plugins

MINIMAL = {
    "site": {"id": "c"},
    "links": {"gw": {"type": "modbus_tcp", "host": "127.0.0.1"}},
}


def site_with(opcua: dict | None, tmp_path: Path | None = None):  # type: ignore[no-untyped-def]
    data = copy.deepcopy(MINIMAL)
    if opcua is not None:
        data["opcua"] = opcua
    if tmp_path is None:
        return parse_site(data)
    import tomli_w

    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(data))
    return load_site(path)


def errors_of(opcua: dict, tmp_path: Path | None = None) -> list[str]:
    return [str(e) for e in check_config(site_with(opcua, tmp_path))[1]]


def test_defaults_for_a_site_file_without_a_section(tmp_path: Path) -> None:
    config = read_config(site_with(None, tmp_path))
    assert config is not None
    assert config.port == 4840 and config.port_fallback
    assert config.policies == DEFAULT_POLICIES
    assert not config.allow_none and not config.allow_anonymous
    assert config.pki_dir == tmp_path / "opcua"
    assert config.users_path == tmp_path / "opcua" / "users.json"


def test_no_server_for_an_in_memory_site_without_a_section_or_when_disabled(
    tmp_path: Path,
) -> None:
    assert read_config(site_with(None)) is None
    assert read_config(site_with({"enabled": False}, tmp_path)) is None


def test_every_bad_field_is_named() -> None:
    assert errors_of({"port": 70000, "pki_dir": "/x"}) == [
        "opcua.port: expected 0..65535, got 70000"
    ]
    assert errors_of({"security_policies": ["Basic128"], "pki_dir": "/x"}) == [
        "opcua.security_policies: expected some of Basic256Sha256, Aes256Sha256RsaPss, "
        "Aes128Sha256RsaOaep; got 'Basic128'"
    ]
    (none_error,) = errors_of({"security_policies": ["None"], "pki_dir": "/x"})
    assert none_error.startswith("opcua.security_policies:") and "allow_none" in none_error
    (relative,) = errors_of({"pki_dir": "pki"})
    assert relative.startswith("opcua.pki_dir: a relative path needs a site file")
    (typo,) = errors_of({"alow_anonymous": True, "pki_dir": "/x"})
    assert typo.startswith("opcua.alow_anonymous: unknown key")
    (empty,) = errors_of({"security_policies": [], "pki_dir": "/x"})
    assert "no security policy left" in empty


def test_login_throttling_and_the_rejected_folder_are_configured_by_source_not_name() -> None:
    config = read_config(
        site_with(
            {
                "pki_dir": "/x",
                "login_free_failures": 3,
                "login_delay_s": 0.5,
                "login_delay_max_s": 120,
                "rejected_max_certificates": 20,
                "rejected_max_bytes": 100_000,
                "timestamp_refresh_s": 5,
            }
        )
    )
    assert config is not None
    assert (config.login_free_failures, config.login_delay_s, config.login_delay_max_s) == (
        3,
        0.5,
        120,
    )
    assert (config.rejected_max_certificates, config.rejected_max_bytes) == (20, 100_000)
    assert config.timestamp_refresh_s == 5
    assert read_config(site_with({"pki_dir": "/x"})).timestamp_refresh_s is None  # type: ignore[union-attr]
    # The keys of the lockout by user name are gone, with the reason and what replaces them.
    (old,) = errors_of({"pki_dir": "/x", "lockout_failures": 5})
    assert old.startswith("opcua.lockout_failures: failed logins are now throttled per client")
    assert "login_free_failures" in old
    (old_s,) = errors_of({"pki_dir": "/x", "lockout_s": 30})
    assert "login_delay_s" in old_s
    (order,) = errors_of({"pki_dir": "/x", "login_delay_s": 10, "login_delay_max_s": 5})
    assert order == "opcua.login_delay_max_s: expected at least login_delay_s (10), got 5"
    (nobody,) = errors_of({"pki_dir": "/x", "security_policies": [], "allow_none": True})
    assert nobody.startswith("opcua.security_policies: with only the None policy")
    assert not errors_of(
        {"pki_dir": "/x", "security_policies": [], "allow_none": True, "allow_anonymous": True}
    )


def test_the_runtime_refuses_a_bad_section() -> None:
    plugins = load_plugins()
    site = site_with({"port": -1, "pki_dir": "/x"})
    with pytest.raises(ConfigError) as err:
        plugins.validate_site(site)
    assert "opcua.port: expected 0..65535, got -1" in str(err.value)


def test_users_file_keeps_salted_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    add_user(path, "alice", "correct horse", Role.CASHIER)
    add_user(path, "bob", "correct horse", "viewer")
    text = path.read_text()
    assert "correct horse" not in text
    doc = json.loads(text)
    salts = {u["salt"] for u in doc["users"]}
    hashes = {u["hash"] for u in doc["users"]}
    assert len(salts) == 2 and len(hashes) == 2  # same password, different hashes
    assert path.stat().st_mode & 0o077 == 0
    assert {u.name: u.role for u in load_users(path).values()} == {
        "alice": Role.CASHIER,
        "bob": Role.VIEWER,
    }


def test_user_errors(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    add_user(path, "alice", "long enough", "admin")
    with pytest.raises(UserError, match="already exists"):
        add_user(path, "alice", "long enough", "admin")
    add_user(path, "alice", "another one", "viewer", replace=True)
    with pytest.raises(UserError, match="at least 8"):
        add_user(path, "carol", "short", "viewer")
    with pytest.raises(UserError, match="role"):
        add_user(path, "carol", "long enough", "superuser")
    with pytest.raises(UserError, match="user name"):
        add_user(path, "carol smith", "long enough", "viewer")
    with pytest.raises(UserError, match=r"no user 'dave' \(users: alice\)"):
        remove_user(path, "dave")


def test_verification_reload_cache_and_no_lockout_by_name(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    directory = UserDirectory(path)
    assert directory.verify("alice", "long enough") is None  # no file yet
    add_user(path, "alice", "long enough", "operator")  # noticed without a restart
    assert directory.verify("alice", "long enough") is Role.OPERATOR
    assert directory.verify("alice", "long enough") is Role.OPERATOR  # from the cache
    assert "alice" in directory._verified
    assert directory.verify("alice", "wrong one") is None
    # A changed password invalidates what was remembered.
    add_user(path, "alice", "new password", "operator", replace=True)
    assert directory.verify("alice", "long enough") is None
    assert directory.verify("alice", "new password") is Role.OPERATOR
    for _ in range(20):
        assert directory.verify("alice", "guess") is None
    # Guesses never lock the name: throttling is by source (logins.py), not by user.
    assert directory.verify("alice", "new password") is Role.OPERATOR
