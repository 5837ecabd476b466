"""Commands for the site file, plugins and devices: check, plugins, simulate, run, read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import click

from ..app.runtime import Runtime
from ..app.simulation import SimulatedSite
from ..billing.settings import check_billing
from ..config.site import check_devices_against_models
from ..contracts import SimulatorOptions
from ..errors import ConfigError
from ..field.plausibility import check_device_limits
from ..model import MeterKind, PointSpec, Quality, Sample
from ..payments.settings import check_payments
from ..prepay.site_check import check_prepayment_sections
from . import CliContext
from .common import load_checked_site, run_async, site_argument, wait_for_stop
from .params import DURATION, SPEEDUP, simulator_options

T = TypeVar("T")


@click.command("plugins")
@click.option("--models/--no-models", default=True, help="List each plugin's device models.")
@click.pass_obj
def plugins_command(obj: CliContext, models: bool) -> None:
    """List installed plugins, their versions and the device models they provide."""
    plugins = obj.plugins
    for info in plugins.infos.values():
        click.echo(f"{info.name:<14} {info.distribution} {info.version}  ({info.module})")
        if models:
            for name in info.models:
                model = plugins.models[name]
                unverified = len(model.unverified_points)
                click.echo(
                    f"    {name:<22} {model.kind:<8} {len(model.points):>3} points "
                    f"({unverified} on unverified registers)  "
                    f"commands: {', '.join(c.name for c in model.commands) or '-'}"
                )
    for failure in plugins.failures:
        click.echo(f"{failure.name:<14} FAILED: {failure.error}", err=True)


@click.command("models")
@click.argument("names", nargs=-1, metavar="[MODEL]...")
@click.pass_obj
def models_command(obj: CliContext, names: tuple[str, ...]) -> None:
    """Show device models point by point: unit, role, plausible range, and whether the
    register is verified (two sources agree) or rests on one source."""
    catalogue = obj.plugins.models
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        known = ", ".join(sorted(catalogue))
        raise click.BadParameter(f"unknown model(s) {', '.join(unknown)}; installed: {known}")
    for name in names or sorted(catalogue):
        model = catalogue[name]
        if model.kind not in (MeterKind.ELECTRIC, MeterKind.WATER):
            continue
        click.echo(f"{name}  ({model.vendor} {model.product}, {model.kind}, plugin {model.plugin})")
        for point in model.points:
            mark = "verified" if point.verified else "UNVERIFIED"
            click.echo(
                f"    {point.name:<22} {point.unit or '-':<8} {point.role:<11} "
                f"{_limits_text(point):<16} {mark:<10} {point.source}"
            )
        for command in model.commands:
            mark = "verified" if command.verified else "UNVERIFIED"
            click.echo(f"    command {command.name:<14} {mark:<10} {command.source}")


def _limits_text(point: PointSpec) -> str:
    """A point's plausible values: its range, or the legal values of a state register."""
    if point.legal is not None:
        return "one of " + ",".join(str(v) for v in point.legal)
    if point.low is not None or point.high is not None:
        low = "" if point.low is None else f"{point.low:g}"
        high = "" if point.high is None else f"{point.high:g}"
        return f"{low}..{high}"
    return "-"


@click.command("check")
@site_argument
@click.pass_obj
def check_command(obj: CliContext, site_file: str) -> None:
    """Validate a site file; every error names its field. Exit status 2 on errors."""
    site = load_checked_site(site_file)
    check_devices_against_models(site, obj.plugins.models)
    problems = check_device_limits(site, obj.plugins.models)
    problems.extend(check_prepayment_sections(site, obj.plugins.models))
    problems.extend(check_billing(site, obj.plugins.models))
    problems.extend(check_payments(site))
    try:
        obj.plugins.validate_site(site)
    except ConfigError as exc:
        problems.extend(exc.errors)
    if problems:
        raise ConfigError(site_file, problems)
    click.echo(
        f"{site_file}: OK — site {site.id}: {len(site.links)} links, {len(site.devices)} devices, "
        f"{len(site.buildings)} buildings, {len(site.rooms)} rooms"
    )


@click.command("simulate")
@site_argument
@click.option(
    "--speedup",
    type=SPEEDUP,
    default=None,
    help="Simulated seconds per second (default: the site's [poll] time_scale, 1).",
)
@click.option("--serial-timing", is_flag=True, help="Delay answers as the link's baud rate would.")
@click.option("--silent", multiple=True, metavar="METER", help="Make a device silent.")
@click.option(
    "--garbage", multiple=True, metavar="METER", help="Make a device answer with garbage."
)
@click.option("--duration", type=DURATION, default=None, help="Stop after this many seconds.")
@simulator_options
@click.pass_obj
def simulate_command(
    obj: CliContext,
    site_file: str,
    speedup: float | None,
    serial_timing: bool,
    silent: tuple[str, ...],
    garbage: tuple[str, ...],
    duration: float | None,
    sim_server: str,
    sim_step: float,
) -> None:
    """Serve simulated devices for every link of SITE, on 127.0.0.1.

    Links whose host is 127.0.0.1 listen on their configured port, so `openprepay run SITE`
    (or any SCADA) finds them; other links get a free port, printed at start.
    """
    site = load_checked_site(site_file)
    check_devices_against_models(site, obj.plugins.models)
    options = SimulatorOptions(
        speedup=site.poll.time_scale if speedup is None else speedup,
        serial_timing=serial_timing,
        timezone=site.info.timezone,
        lean_server=sim_server == "lean",
        advance_every_s=sim_step,
    )

    async def main(stop: asyncio.Event) -> None:
        sims = SimulatedSite(site, obj.plugins, options)
        await sims.start()
        for meter in silent:
            sims.devices[meter].silent = True
        for meter in garbage:
            sims.devices[meter].garbage = True
        for link_id, (host, port) in sims.addresses.items():
            n = len(site.devices_on(link_id))
            click.echo(f"link {link_id}: {site.links[link_id].type} on {host}:{port} ({n} devices)")
        click.echo("simulating; Ctrl-C to stop")
        try:
            await wait_for_stop(stop, duration)
        finally:
            await sims.stop()

    run_async(main)


@click.command("run")
@site_argument
@click.option("--duration", type=DURATION, default=None, help="Stop after this many seconds.")
@click.pass_obj
def run_command(obj: CliContext, site_file: str, duration: float | None) -> None:
    """Run the service against the real devices of SITE until Ctrl-C."""
    site = load_checked_site(site_file)

    async def main(stop: asyncio.Event) -> None:
        async with Runtime(site, obj.plugins):
            await wait_for_stop(stop, duration)

    run_async(main)


@click.command("read")
@site_argument
@click.argument("meters", nargs=-1, metavar="[METER]...")
@click.pass_obj
def read_command(obj: CliContext, site_file: str, meters: tuple[str, ...]) -> None:
    """Read devices once and print every point with its unit (commissioning aid)."""
    site = load_checked_site(site_file)
    unknown = [m for m in meters if m not in site.devices]
    if unknown:
        known = ", ".join(sorted(site.devices)[:10])
        raise click.BadParameter(f"unknown meter(s) {', '.join(unknown)}; site has: {known}...")
    targets = list(meters) or list(site.devices)

    async def main(stop: asyncio.Event) -> int:
        runtime = Runtime(site, obj.plugins)
        # Only the meters asked for are read: no routine polls of the whole site.
        await runtime.arbiter.start(routine_polls=False)
        failures = 0
        try:
            for n, meter_id in enumerate(targets):
                try:
                    sample = await _unless_stopped(runtime.arbiter.read_now(meter_id), stop)
                except _Interrupted:
                    click.echo(f"interrupted; {len(targets) - n} meter(s) not read", err=True)
                    return INTERRUPTED
                except Exception as exc:  # show every meter, then fail
                    failures += 1
                    click.echo(f"{meter_id}: {Quality.BAD_COMM_FAILURE.name}: {exc}")
                    continue
                click.echo(
                    f"{meter_id} ({sample.model.name}) at {sample.read_at:%Y-%m-%d %H:%M:%S}Z"
                )
                _print_values(sample)
        finally:
            await runtime.arbiter.stop()
        return 1 if failures else 0

    status = run_async(main)
    if status:
        raise click.exceptions.Exit(status)


def _print_values(sample: Sample) -> None:
    """Every value with its unit; what is not Good says its quality and why, and values
    that rest on an unverified register say so."""
    unverified = set(sample.model.unverified_points)
    notes = sample.point_errors or {}
    if not sample.quality.is_good:
        click.echo(f"    quality {sample.quality.name}: {sample.error or 'no reason given'}")
    for name in [p.name for p in sample.model.points]:
        quality = sample.quality_of(name)
        if name not in sample.values and quality.is_good:
            continue
        value = sample.values.get(name, "-")
        marks = []
        if not quality.is_good:
            marks.append(quality.name + (f" ({notes[name]})" if name in notes else ""))
        if name in unverified:
            marks.append("unverified register")
        line = f"    {name:<22} {value!s:>14} {sample.unit(name):<8}"
        click.echo(f"{line} {'; '.join(marks)}".rstrip())


#: Exit status of a device command stopped by Ctrl-C or SIGTERM before it was done.
INTERRUPTED = 130


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while waiting for a device."""


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T:
    """The result of `work`, unless `stop` is set first (then `_Interrupted`, and `work` is
    cancelled): a silent meter must not keep a stopped command waiting."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        interrupted = not task.done()
        if interrupted:
            task.cancel()
    if interrupted:
        raise _Interrupted
    return task.result()


def register(cli: click.Group) -> None:
    for command in (
        plugins_command,
        models_command,
        check_command,
        simulate_command,
        run_command,
        read_command,
    ):
        cli.add_command(command)
