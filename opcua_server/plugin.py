"""The OPC UA server's hooks: it plugs into OpenPrepay like any third-party plugin.

Registered under the entry-point group `openprepay.plugins` as `opcua` (block it with
OPENPREPAY_DISABLE_PLUGINS=opcua, or `[opcua] enabled = false` in the site file).
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from openprepay.core.config.site import Site
from openprepay.core.contracts import Service
from openprepay.core.errors import FieldError
from openprepay.core.hookspecs import hookimpl
from openprepay.core.host import ServiceHost

from .config import check_config, read_config


@hookimpl
def openprepay_validate_site(site: Site) -> Sequence[FieldError]:
    return check_config(site)[1]


@hookimpl
def openprepay_services(runtime: ServiceHost) -> Sequence[Service]:
    config = read_config(runtime.site)
    if config is None:
        return []
    # asyncua is heavy: loaded only when a site runs the server, not for every command.
    from .assembly import make_service

    return [make_service(config, runtime)]


@hookimpl
def openprepay_cli_commands(cli: click.Group) -> None:
    from .cli import opcua_group

    cli.add_command(opcua_group)
