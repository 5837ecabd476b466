"""The `openprepay` command line.

Built-in commands live in the modules of this package, one module per area; plugins add
theirs through the `openprepay_cli_commands` hook. Errors the product raises on purpose
(`ConfigError`, `OpenPrepayError`) are printed without a traceback and set the exit status.
"""

from __future__ import annotations

import click

from ..app.plugins import Plugins
from ..errors import ConfigError, OpenPrepayError
from ..logs import setup_logging
from .common import exit_without_hung_threads

#: Exit status for bad input (site file, arguments) and for failed operations.
EXIT_CONFIG = 2
EXIT_FAILED = 1


class CliContext:
    """Shared state of one CLI invocation."""

    def __init__(self, plugins: Plugins | None = None) -> None:
        self._plugins = plugins

    @property
    def plugins(self) -> Plugins:
        if self._plugins is None:
            self._plugins = Plugins.load()
        return self._plugins


class OpenPrepayGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_CONFIG)
        except OpenPrepayError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_FAILED)


@click.group(cls=OpenPrepayGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--log-format", default="text", show_default=True, type=click.Choice(["text", "json"])
)
@click.version_option(package_name="openprepay")
@click.pass_context
def cli(ctx: click.Context, log_level: str, log_format: str) -> None:
    """OpenPrepay: prepaid electricity and water metering with Modbus, OPC UA and InfluxDB."""
    setup_logging(log_level, log_format)
    ctx.ensure_object(CliContext)


def _register_builtin() -> None:
    # Imported here: every command module imports `CliContext` and the exit codes from
    # this package, so they can only load once it has.
    from . import (
        accounts,
        billing,
        cluster,
        database,
        demo,
        devices,
        payer,
        payments,
        prepay,
        tariff,
    )

    devices.register(cli)
    demo.register(cli)
    tariff.register(cli)
    database.register(cli)
    accounts.register(cli)
    prepay.register(cli)
    billing.register(cli)
    payments.register(cli)
    payer.register(cli)
    cluster.register(cli)


#: Plugins whose commands are on the group (the built-in ones are added with the first).
_with_commands: set[str] = set()


def build_cli(plugins: Plugins | None = None) -> click.Group:
    """The command group with built-in and plugin commands (also used by tests). The group
    is one per process: a later call with plugins not seen before adds their commands, so
    a first caller that had some plugins switched off does not hide them from later ones."""
    if not _with_commands:
        _register_builtin()
        _with_commands.add("")  # the built-in commands
    plugins = plugins or Plugins.load()
    new = set(plugins.infos) - _with_commands
    if new:
        plugins.add_cli_commands(cli, only=new)
        _with_commands.update(new)
    return cli


def main(argv: list[str] | None = None) -> None:
    setup_logging("WARNING")  # until the group's options configure it
    plugins = Plugins.load()
    try:
        build_cli(plugins).main(args=argv, obj=CliContext(plugins), prog_name="openprepay")
    except SystemExit as end:
        exit_without_hung_threads(end.code)
        raise
