"""`openprepay opcua users add|list|remove SITE` and `openprepay opcua cert show|trust SITE`.

Both work on the files in the site's OPC UA folder (`[opcua] pki_dir`, default `opcua/`
next to the site file); a running server notices user and trust-store changes without a
restart.
"""

from __future__ import annotations

import click

from openprepay.core.cli.common import load_checked_site, site_argument
from openprepay.core.cli.secret import password_options, read_password

from .config import OpcUaConfig, read_config
from .pki import Pki, ensure_server_certificate, list_certificates, thumbprint, trust, untrust
from .users import Role, UserError, add_user, load_users, remove_user


def _config(site_file: str) -> OpcUaConfig:
    site = load_checked_site(site_file)
    config = read_config(site)
    if config is None or config.pki_dir is None:
        raise UserError("the OPC UA server is disabled in this site file ([opcua] enabled)")
    return config


@click.group("opcua")
def opcua_group() -> None:
    """OPC UA server: users and certificates."""


@opcua_group.group("users")
def users_group() -> None:
    """OPC UA users (name, role, password)."""


@users_group.command("add")
@site_argument
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    default=Role.VIEWER.value,
    show_default=True,
    help="viewer: browse/read/subscribe; operator: + Disconnect/Reconnect/Protect; "
    "cashier: + TopUp/Refund; admin: everything.",
)
@password_options
@click.option("--replace", is_flag=True, help="Change the role and password of an existing user.")
def users_add(
    site_file: str,
    name: str,
    role: str,
    password_env: str | None,
    password_file: str | None,
    replace: bool,
) -> None:
    """Add user NAME (or change it with --replace). The password (at least 8 characters) is
    prompted for, or read from --password-env VAR or --password-file FILE; never an argument."""
    config = _config(site_file)
    password = read_password(password_env, password_file, prompt="Password")
    record = add_user(config.users_path, name, password, role, replace=replace)
    click.echo(f"user {record.name} ({record.role.value}) saved in {config.users_path}")


@users_group.command("list")
@site_argument
def users_list(site_file: str) -> None:
    """List users and their roles."""
    config = _config(site_file)
    users = load_users(config.users_path)
    if not users:
        click.echo(f"no users in {config.users_path}")
        return
    width = max(len(n) for n in users)
    for user in sorted(users.values(), key=lambda u: u.name):
        click.echo(f"{user.name:<{width}}  {user.role.value:<8}  created {user.created or '-'}")


@users_group.command("remove")
@site_argument
@click.argument("name")
def users_remove(site_file: str, name: str) -> None:
    """Remove user NAME (its open sessions end when they reconnect)."""
    config = _config(site_file)
    remove_user(config.users_path, name)
    click.echo(f"user {name} removed")


@opcua_group.group("cert")
def cert_group() -> None:
    """The server certificate and the trust store for client certificates."""


@cert_group.command("show")
@site_argument
def cert_show(site_file: str) -> None:
    """The server certificate, trusted and rejected client certificates."""
    config = _config(site_file)
    pki = Pki(config.pki_dir)  # type: ignore[arg-type]
    site = load_checked_site(site_file)
    cert = ensure_server_certificate(pki, f"urn:openprepay:{site.id}:opcua", config.hostname)
    click.echo(f"server certificate {pki.cert_file}")
    click.echo(f"  SHA-1     {thumbprint(cert)}")
    click.echo(f"  subject   {cert.subject.rfc4514_string()}")
    click.echo(
        f"  valid     {cert.not_valid_before_utc:%Y-%m-%d} .. {cert.not_valid_after_utc:%Y-%m-%d}"
    )
    click.echo(f"  endpoint  {config.endpoint_url}")
    for title, folder in (("trusted", pki.trusted_dir), ("rejected", pki.rejected_dir)):
        certs = list_certificates(folder)
        click.echo(f"{title} client certificates ({len(certs)}) in {folder}")
        for info in certs:
            click.echo(
                f"  {info.thumbprint}  {info.application_uri or '-'}  {info.subject}  "
                f"until {info.not_after:%Y-%m-%d}"
            )


@cert_group.command("trust")
@site_argument
@click.argument("certificate", metavar="THUMBPRINT|FILE")
@click.option("--revoke", is_flag=True, help="Move a trusted certificate back to rejected.")
def cert_trust(site_file: str, certificate: str, revoke: bool) -> None:
    """Trust a rejected client certificate (by SHA-1 thumbprint or a unique prefix of it)
    or a certificate file (DER or PEM; a CA certificate trusts what it issued)."""
    config = _config(site_file)
    pki = Pki(config.pki_dir)  # type: ignore[arg-type]
    info = untrust(pki, certificate) if revoke else trust(pki, certificate)
    verb = "no longer trusted" if revoke else "trusted"
    click.echo(f"{verb}: {info.thumbprint}  {info.application_uri or '-'}  {info.subject}")
