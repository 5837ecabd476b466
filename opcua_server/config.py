"""The `[opcua]` section of the site file, read and checked field by field.

Without a section the server still runs, secure by default, when the site comes from a file:
port 4840 (or a free port when 4840 is taken), Basic256Sha256 and Aes256Sha256RsaPss with
SignAndEncrypt, username/password only, its certificate, trust store and users in `opcua/`
next to the site file. A site built in memory without a section (tests, embedded use) has
nowhere to keep a certificate or users, so it runs no OPC UA server. docs/opcua.md is the
reference.
"""

from __future__ import annotations

import enum
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openprepay.core.config.reader import TableReader
from openprepay.core.config.site import RELATIVE_WITHOUT_SITE, Site, site_relative_path
from openprepay.core.errors import ConfigError, FieldError

SECTION = "opcua"
DEFAULT_PORT = 4840
_THROTTLE = (
    "failed logins are now throttled per client address and certificate, not per user "
    "name (a guesser could lock a real user out): "
)
#: Keys of earlier versions, with what replaces them.
RENAMED = {
    "lockout_failures": _THROTTLE + "use login_free_failures (docs/opcua.md, Security)",
    "lockout_s": _THROTTLE + "use login_delay_s and login_delay_max_s (docs/opcua.md, Security)",
}


class Policy(enum.StrEnum):
    """Security policies a client can pick; each is offered with SignAndEncrypt."""

    BASIC256SHA256 = "Basic256Sha256"
    AES256SHA256RSAPSS = "Aes256Sha256RsaPss"
    AES128SHA256RSAOAEP = "Aes128Sha256RsaOaep"


DEFAULT_POLICIES = (Policy.BASIC256SHA256, Policy.AES256SHA256RSAPSS)
_PATH = re.compile(r"^/[A-Za-z0-9_./\-]*$")


@dataclass(frozen=True, slots=True)
class OpcUaConfig:
    enabled: bool = True
    #: Address to listen on; `hostname` is the name put in endpoint URLs and the certificate.
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    #: True when the port was not configured: if 4840 is taken, a free port is used instead.
    port_fallback: bool = True
    path: str = "/openprepay"
    hostname: str = field(default_factory=socket.gethostname)
    policies: tuple[Policy, ...] = DEFAULT_POLICIES
    #: Also offer the policies with Sign only (integrity without confidentiality).
    sign_only: bool = False
    #: Offer the unsecured None policy (passwords are still encrypted with the server key).
    allow_none: bool = False
    #: Sessions without a user name get the viewer role (browse, read, subscribe, history).
    allow_anonymous: bool = False
    #: Folder of the server certificate and key (own/), trusted/ and rejected/ client
    #: certificates; the users file defaults to users.json in it.
    pki_dir: Path | None = None
    users_file: Path | None = None
    #: On a first start with no users, create `demo`/`demo` as admin (the demo only).
    demo: bool = False
    #: HistoryRead on energy, power, balances and supply state, from the historian.
    history: bool = True
    history_max_values: int = 10_000
    #: How often the account list is re-read (new and closed accounts), in seconds.
    #: Every account's snapshot is read again this often (today's kWh, m³ and cost; the
    #: rest follows events and the engine's account samples at once): at 20,000 accounts
    #: one full read costs about a second of the service's CPU.
    account_refresh_s: float = 60.0
    #: Failed logins a source (client address + certificate) may make before it waits.
    login_free_failures: int = 5
    #: The first wait after that; it doubles with every further failure, up to the max.
    login_delay_s: float = 1.0
    login_delay_max_s: float = 300.0
    #: Bounds of rejected/ (refused client certificates kept for `opcua cert trust`).
    rejected_max_certificates: int = 100
    rejected_max_bytes: int = 1_048_576
    #: A steady Good value gets the time of the latest sample at least this often (so a
    #: client tells a frozen value from a steady one); None: each meter's poll interval.
    timestamp_refresh_s: float | None = None

    @property
    def endpoint_url(self) -> str:
        return f"opc.tcp://{self.hostname}:{self.port}{self.path}"

    @property
    def users_path(self) -> Path:
        assert self.pki_dir is not None
        return self.users_file or self.pki_dir / "users.json"


def read_config(site: Site) -> OpcUaConfig | None:
    """The OPC UA configuration of `site`, None when no server should run; raises
    `ConfigError` naming every bad field."""
    config, errors = check_config(site)
    if errors:
        raise ConfigError(str(site.path or "site"), errors)
    return config


def check_config(site: Site) -> tuple[OpcUaConfig | None, list[FieldError]]:
    errors: list[FieldError] = []
    present = SECTION in site.sections
    data: Any = site.sections.get(SECTION, {})
    r = TableReader(data, SECTION, errors)
    d = OpcUaConfig()
    base = site.path.parent if site.path is not None else None

    enabled = r.bool("enabled", True)
    host = r.str("host", d.host)
    port_given = r.has("port")
    port = r.int("port", DEFAULT_PORT, low=0, high=65535)
    path = r.str("path", d.path, pattern=_PATH, hint="expected a URL path such as /openprepay")
    hostname = r.str("hostname", None)
    policy_names = r.str_list("security_policies", [p.value for p in DEFAULT_POLICIES])
    sign_only = r.bool("sign_only", False)
    allow_none = r.bool("allow_none", False)
    allow_anonymous = r.bool("allow_anonymous", False)
    pki_dir = r.str("pki_dir", "opcua")
    users_file = r.str("users_file", None)
    demo = r.bool("demo", False)
    history = r.bool("history", True)
    history_max = r.int("history_max_values", d.history_max_values, low=1, high=1_000_000)
    refresh = r.number("account_refresh_s", d.account_refresh_s, low=0.0, low_exclusive=True)
    free_failures = r.int("login_free_failures", d.login_free_failures, low=0, high=1000)
    delay = r.number("login_delay_s", d.login_delay_s, low=0.0, low_exclusive=True, high=86400)
    delay_max = r.number("login_delay_max_s", d.login_delay_max_s, low=0.0, high=86400)
    rejected_count = r.int(
        "rejected_max_certificates", d.rejected_max_certificates, low=1, high=100_000
    )
    rejected_bytes = r.int("rejected_max_bytes", d.rejected_max_bytes, low=65_536, high=2**34)
    stamp_refresh = r.number("timestamp_refresh_s", None, low=0.0, high=86400)
    for old in RENAMED:
        if r.has(old):
            r.raw(old)  # read, so it is reported as renamed rather than as unknown
            r.error(RENAMED[old], old)
    r.finish()
    if delay is not None and delay_max is not None and delay_max < delay:
        r.error(
            f"expected at least login_delay_s ({delay:g}), got {delay_max:g}", "login_delay_max_s"
        )
    policies = _policies(r, policy_names, allow_none, allow_anonymous)
    pki_path, users_path = _paths(r, pki_dir, users_file, base, present)

    if errors:
        return None, errors
    if not enabled or pki_path is None:
        # Disabled, or an in-memory site without a section: nowhere to keep certificates.
        return None, errors
    return (
        OpcUaConfig(
            enabled=True,
            host=host,
            port=port,
            port_fallback=not port_given,
            path=path.rstrip("/") or "/",
            hostname=hostname or d.hostname,
            policies=tuple(policies),
            sign_only=sign_only,
            allow_none=allow_none,
            allow_anonymous=allow_anonymous,
            pki_dir=pki_path,
            users_file=users_path,
            demo=demo,
            history=history,
            history_max_values=history_max,
            account_refresh_s=refresh,
            login_free_failures=free_failures,
            login_delay_s=delay,
            login_delay_max_s=delay_max,
            rejected_max_certificates=rejected_count,
            rejected_max_bytes=rejected_bytes,
            timestamp_refresh_s=stamp_refresh,
        ),
        errors,
    )


def _policies(
    r: TableReader, names: list[str] | None, allow_none: bool, allow_anonymous: bool
) -> list[Policy]:
    """The security policies named, without repeats; refuses a set nobody could log in with."""
    policies: list[Policy] = []
    if names is None:
        return policies
    if not names and allow_none and not allow_anonymous:
        r.error(
            "with only the None policy no password can be encrypted, so nobody could log in: "
            "give a security policy, or allow_anonymous = true for read-only access",
            "security_policies",
        )
    known = [p.value for p in Policy]
    for name in names:
        if name == "None":
            r.error(
                "the None policy is not a security policy here; set allow_none = true "
                "to offer it beside the secure ones",
                "security_policies",
            )
        elif name not in known:
            r.error(f"expected some of {', '.join(known)}; got {name!r}", "security_policies")
        elif Policy(name) not in policies:
            policies.append(Policy(name))
    if not names and not allow_none:  # (with allow_none: checked above)
        r.error(
            "no security policy left: give at least one, or allow_none = true",
            "security_policies",
        )
    return policies


def _paths(
    r: TableReader, pki_dir: str | None, users_file: str | None, base: Path | None, present: bool
) -> tuple[Path | None, Path | None]:
    """The PKI folder and the users file, relative to the site file's folder."""
    pki_path = site_relative_path(pki_dir, base) if pki_dir is not None else None
    if pki_dir is not None and pki_path is None and present:
        r.error(RELATIVE_WITHOUT_SITE, "pki_dir")
    users_path = None
    if users_file is not None:
        users_path = site_relative_path(users_file, base)
        if users_path is None:
            r.error(RELATIVE_WITHOUT_SITE, "users_file")
    return pki_path, users_path


def pki_dir_of(site: Site) -> Path:
    """The PKI/state folder of `site` for the CLI, which needs one even without a server."""
    config = read_config(site)
    if config is not None and config.pki_dir is not None:
        return config.pki_dir
    raise ConfigError(
        str(site.path or "site"),
        [FieldError("opcua.pki_dir", "the OPC UA server is disabled or has no folder to keep")],
    )
