"""The historian's hooks: it plugs into OpenPrepay like any third-party plugin.

Registered under the entry-point group `openprepay.plugins` as `historian` (block it with
OPENPREPAY_DISABLE_PLUGINS=historian).
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
from .service import make_historian


@hookimpl
def openprepay_validate_site(site: Site) -> Sequence[FieldError]:
    return check_config(site)[1]


@hookimpl
def openprepay_services(runtime: ServiceHost) -> Sequence[Service]:
    historian = make_historian(read_config(runtime.site), runtime.site, runtime.bus, runtime.models)
    if historian is None:
        return []
    runtime.history = historian.reader
    return [historian]


@hookimpl
def openprepay_cli_commands(cli: click.Group) -> None:
    from .cli import historian_group

    cli.add_command(historian_group)
