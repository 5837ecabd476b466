"""`openprepay demo`: a simulated building and the full service on embedded defaults."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click
import tomli_w
from rich.console import Console
from rich.live import Live
from rich.text import Text

from ..app.demo import demo_site_data, open_demo_accounts
from ..app.runtime import Runtime
from ..app.simulation import SimulatedSite
from ..app.view import DailyTotals, RoomView
from ..config.site import LinkType, load_site, parse_site
from ..contracts import SimulatorOptions
from ..ledger import format_fen
from ..model import MeterKind, Sample
from ..prepay.account_points import ACCOUNT_MODEL
from ..prepay.feecontrol import FeeState
from ..tasks import wait_event
from . import CliContext
from .common import run_async
from .params import DURATION, SPEEDUP, Count, simulator_options

log = logging.getLogger("openprepay.demo")


@click.command("demo")
@click.option("--buildings", default=2, show_default=True, type=Count(1, 26))
@click.option("--floors", default=5, show_default=True, type=Count(1, 99))
@click.option("--rooms", "rooms_per_floor", default=6, show_default=True, type=Count(1, 40))
@click.option(
    "--speedup",
    default=60.0,
    show_default=True,
    type=SPEEDUP,
    help="Simulated seconds per real second (energy and water accrue faster).",
)
@click.option(
    "--state-dir",
    default="openprepay-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the demo keeps its site file and data.",
)
@click.option("--headless", is_flag=True, help="No live view; log a summary line instead.")
@click.option("--duration", type=DURATION, default=None, help="Stop after this many seconds.")
@simulator_options
@click.pass_obj
def demo_command(
    obj: CliContext,
    buildings: int,
    floors: int,
    rooms_per_floor: int,
    speedup: float,
    state_dir: str,
    headless: bool,
    duration: float | None,
    sim_server: str,
    sim_step: float,
) -> None:
    """Run a simulated building and the full service against it, until Ctrl-C.

    The site file the service runs on is written to STATE_DIR/site.toml, so the other
    commands (read, check, topup...) work against the running demo.
    """
    plugins = obj.plugins
    data = demo_site_data(buildings=buildings, floors=floors, rooms_per_floor=rooms_per_floor)
    if speedup > 0:  # meter time runs faster: so may the registers (plausibility)
        data["poll"]["time_scale"] = speedup
    site = parse_site(data, source="demo")
    options = SimulatorOptions(
        speedup=speedup,
        ephemeral_ports=True,
        timezone=site.info.timezone,
        lean_server=sim_server == "lean",
        advance_every_s=sim_step,
    )
    folder = Path(state_dir)
    folder.mkdir(parents=True, exist_ok=True)

    async def main(stop: asyncio.Event) -> None:
        async with SimulatedSite(site, plugins, options) as sims:
            for link_id, (host, port) in sims.addresses.items():
                link = data["links"][link_id]
                if site.links[link_id].type is LinkType.SERIAL:
                    link["device"] = f"socket://{host}:{port}"
                else:
                    link["host"], link["port"] = host, port
            site_file = folder / "site.toml"
            site_file.write_text(
                "# Written by `openprepay demo`: the demo's site, pointing at its simulators.\n"
                + tomli_w.dumps(data)
            )
            runtime = Runtime(load_site(site_file), plugins)
            totals = DailyTotals(runtime.site, runtime.bus)
            view = RoomView(runtime.site, runtime.readings, totals, plugins.models)
            _prepay_columns(view, runtime)
            async with runtime:
                low = open_demo_accounts(runtime)
                runtime.announcements += [
                    f"prepaid accounts: one per room (id = room id); {', '.join(low)} start "
                    "nearly empty and are cut within a couple of minutes",
                    f"top one up and watch it come back: openprepay topup {site_file} "
                    f"{low[0]} 50 --ref my-first-topup",
                ]
                _announce(runtime, site_file, len(site.devices), len(site.links))
                if headless:
                    await _headless(runtime, stop, duration)
                else:
                    await _live(view, stop, duration)

    run_async(main)


#: Fee-control states in the view: alarm levels get warmer as the balance runs down.
_LEVEL_STYLE = {
    "NORMAL": ("normal", "green"),
    "ALARM1": ("alarm 1", "yellow"),
    "ALARM2": ("alarm 2", "bold yellow"),
    "OVER_ZERO": ("over 0", "bold red"),
    "OVERDRAFT": ("CUT", "bold red"),
}


_BY_SEVERITY = {s.severity: s for s in FeeState}


def _prepay_columns(view: RoomView, runtime: Runtime) -> None:
    """Balance and alarm level of each room's account (the account id is the room id),
    from the account samples the prepayment engine publishes."""

    def account(room: str) -> Sample | None:
        return runtime.readings.get(room, ACCOUNT_MODEL.name)

    def balance(room: str) -> Text:
        sample = account(room)
        if sample is None:
            return Text("–", "dim")
        fen = int(sample.values["energy_balance_fen"])
        return Text(format_fen(fen), "bold red" if fen <= 0 else "")

    def level(room: str) -> Text:
        sample = account(room)
        if sample is None:
            return Text("–", "dim")
        state = _BY_SEVERITY[int(sample.values["alarm_level"])]
        label, style = _LEVEL_STYLE[state.value]
        return Text(label, style)

    view.add_column("Balance ¥", balance)
    view.add_column("Alarm", level)


def _announce(runtime: Runtime, site_file: Path, devices: int, links: int) -> None:
    console = Console(stderr=True)
    console.print(f"[bold]OpenPrepay demo[/]: {devices} simulated meters on {links} links")
    console.print(f"site file: {site_file}  (try: openprepay read {site_file} E-A-101)")
    for line in runtime.announcements:
        console.print(line)


async def _live(view: RoomView, stop: asyncio.Event, duration: float | None) -> None:
    loop = asyncio.get_running_loop()
    deadline = None if duration is None else loop.time() + duration
    with Live(view.render(), refresh_per_second=2, screen=False) as live:
        while not stop.is_set() and (deadline is None or loop.time() < deadline):
            live.update(view.render())
            await wait_event(stop, 0.5)


async def _headless(runtime: Runtime, stop: asyncio.Event, duration: float | None) -> None:
    loop = asyncio.get_running_loop()
    deadline = None if duration is None else loop.time() + duration
    while not stop.is_set() and (deadline is None or loop.time() < deadline):
        wait = 10.0 if deadline is None else min(10.0, max(deadline - loop.time(), 0))
        await wait_event(stop, wait)
        good = sum(
            1
            for s in runtime.readings.latest.values()
            if s.source in runtime.site.devices
            and s.model.kind in (MeterKind.ELECTRIC, MeterKind.WATER)
            and s.quality.is_good
        )
        log.info("demo: %d/%d meters online", good, len(runtime.site.devices))


def register(cli: click.Group) -> None:
    cli.add_command(demo_command)
