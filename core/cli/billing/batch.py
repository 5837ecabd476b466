"""`openprepay batch ...`: batch and scheduled operations over many accounts or meters
(dry run, progress bar)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from ...billing.batch import Batches
from ...billing.batch.model import Action, JobView
from ...billing.batch.selection import read_csv_rows
from ...billing.batch.views import counts, describe_params, describe_selection, local_time
from ...billing.export import Table
from ...events import utcnow
from ...ledger import RequestError
from ...model import Sample
from .. import CliContext
from ..common import site_argument
from ..database import operator
from ..params import ROW_ID
from .common import echo_table, pair, parse_time
from .services import billing_services


@click.group("batch")
def batch_group() -> None:
    """Batch and scheduled operations over many accounts or meters."""


def _selection(
    all_site: bool,
    buildings: Sequence[str],
    floors: Sequence[str],
    rooms: Sequence[str],
    accounts: Sequence[str],
    meters: Sequence[str],
    csv_file: str | None,
) -> dict[str, Any]:
    sel: dict[str, Any] = {}
    if all_site:
        sel["site"] = True
    for key, values in (
        ("buildings", buildings),
        ("floors", floors),
        ("rooms", rooms),
        ("accounts", accounts),
        ("meters", meters),
    ):
        if values:
            sel[key] = list(values)
    if csv_file:
        path = Path(csv_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RequestError("csv", f"cannot read {csv_file}: {exc.strerror}") from None
        sel["rows"] = read_csv_rows(text, path.name)
        sel["source"] = path.name
    return sel


def _params(
    action: str,
    tariff: str | None,
    amount: str | None,
    channel: str | None,
    alarm1: str | None,
    alarm2: str | None,
    override: bool,
    kind: str | None,
    prices: Sequence[str],
    command: str | None,
    params: Sequence[str],
) -> dict[str, Any]:
    p: dict[str, Any] = {}
    if action == Action.SET_TARIFF and tariff:
        p["tariff"] = tariff
    if action == Action.TOPUP:
        if amount:
            p["amount"] = amount
        if channel:
            p["channel"] = channel
    if action == Action.SET_THRESHOLDS:
        p.update(alarm1=alarm1, alarm2=alarm2)
    if action in (Action.DISCONNECT, Action.RECONNECT):
        p["override"] = override
        if kind:
            p["kind"] = kind
    if action == Action.SET_PRICE:
        p.update(dict(pair(x, "price") for x in prices))
    if action == Action.SET_PARAMS:
        p["command"] = command
        p["values"] = dict(pair(x, "param") for x in params)
    return p


def _progress(batches: Batches, job_id: int, run_here: bool) -> JobView:
    """Run the job here (claimed as the service would) or follow it, with a progress bar."""
    # Deferred like the other progress bars of the CLI: every command's start-up pays
    # for a module-level import, only this one needs it.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    with progress:
        task = progress.add_task(f"batch {job_id}", total=None, failed=0)

        # The bar counts items carried out; an item waiting for its meter's read-back is
        # carried out (its outcome follows: `batch show`).
        def show(total: int, carried: int, failed: int) -> None:
            progress.update(task, total=max(total, 1), completed=carried, failed=failed)

        carried = 0

        def on_item(item: object) -> None:
            nonlocal carried
            if isinstance(item, Sample) and item.source == f"batch-{job_id}":
                carried += 1  # one sample per item carried out
                show(int(item.values["total"]), carried, int(item.values["failed"]))

        if run_here and batches.claim(job_id=job_id):
            batches.publish = on_item
            view = batches.run(job_id)
            show(view.total, view.total if view.state != "RUNNING" else carried, view.failed)
            return view
        while True:  # the service (or another instance) runs it: follow it
            view = batches.get(job_id)
            finished = view.state not in ("RUNNING", "SCHEDULED") or (
                view.state == "SCHEDULED" and view.run_no > 0
            )
            show(view.total, view.total if finished else view.done + view.failed, view.failed)
            if finished:
                return view
            time.sleep(0.2)


def _outcome(view: JobView) -> str:
    """`3 done, 1 failed of 5, 1 waiting for its meter`: items whose device command has
    not finished are neither done nor failed yet (`batch show` follows them)."""
    waiting = view.total - view.done - view.failed
    return f"{view.done} done, {view.failed} failed of {view.total}" + (
        f", {waiting} waiting for the meter" if waiting and view.state != "RUNNING" else ""
    )


def _selection_options(f: Any) -> Any:
    for option in reversed(
        [
            click.option("--all", "all_site", is_flag=True, help="Every room of the site."),
            click.option("--building", "buildings", multiple=True),
            click.option("--floor", "floors", multiple=True, metavar="BUILDING:FLOOR"),
            click.option("--room", "rooms", multiple=True),
            click.option("--account", "accounts", multiple=True),
            click.option("--meter", "meters", multiple=True),
            click.option(
                "--csv",
                "csv_file",
                type=click.Path(dir_okay=False),
                help="Rows with an account, meter or room column (and amount, tariff...).",
            ),
            click.option("--tariff"),
            click.option("--amount", help="Top-up amount in yuan."),
            click.option("--channel"),
            click.option("--alarm1"),
            click.option("--alarm2"),
            click.option(
                "--override",
                is_flag=True,
                help="Disconnect as an operator's override (the rate limit and 保电 still apply).",
            ),
            click.option("--kind", type=click.Choice(["electric", "water"])),
            click.option(
                "--price",
                "prices",
                multiple=True,
                metavar="RATE=CNY",
                help="set_price: sharp=0.72 ...",
            ),
            click.option("--command"),
            click.option("--param", "params", multiple=True, metavar="NAME=VALUE"),
        ]
    ):
        f = option(f)
    return f


@batch_group.command("create")
@site_argument
@click.argument("action", type=click.Choice([a.value for a in Action]))
@_selection_options
@click.option("--reason", required=True, help="Why (audited with every item).")
@click.option("--at", "at_text", help="Run at this site-local time (default now).")
@click.option(
    "--every", type=click.Choice(["day", "week", "month"]), help="Repeat at the same time."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show what each item would do, or why the real run would fail it; write nothing.",
)
@click.option("--no-wait", is_flag=True, help="Leave a job that is due now to the running service.")
@click.pass_obj
def batch_create(
    obj: CliContext,
    site_file: str,
    action: str,
    all_site: bool,
    buildings: tuple[str, ...],
    floors: tuple[str, ...],
    rooms: tuple[str, ...],
    accounts: tuple[str, ...],
    meters: tuple[str, ...],
    csv_file: str | None,
    tariff: str | None,
    amount: str | None,
    channel: str | None,
    alarm1: str | None,
    alarm2: str | None,
    override: bool,
    kind: str | None,
    prices: tuple[str, ...],
    command: str | None,
    params: tuple[str, ...],
    reason: str,
    at_text: str | None,
    every: str | None,
    dry_run: bool,
    no_wait: bool,
) -> None:
    """Create a batch job: ACTION over a selection, now, at a time or every day/week/month."""
    with billing_services(site_file, obj) as c:
        batches = c.batches
        selection = _selection(all_site, buildings, floors, rooms, accounts, meters, csv_file)
        p = _params(
            action, tariff, amount, channel, alarm1, alarm2, override, kind, prices, command, params
        )
        if dry_run:
            plan = batches.plan(action, p, selection, reason=reason, actor=operator())
            for line in plan:
                click.echo(f"{'ok  ' if line.ok else 'FAIL'} {line.target:<14} {line.text}")
            click.echo(
                f"dry run: {sum(1 for x in plan if x.ok)} of {len(plan)} item(s) would succeed; "
                "nothing written"
            )
            return
        at = parse_time(c.site, at_text) if at_text else None
        job = batches.create(
            action, p, selection, reason=reason, actor=operator(), at=at, every=every
        )
        when = "now" if at is None else f"at {at.astimezone(c.site.info.tz):%Y-%m-%d %H:%M}"
        click.echo(f"batch job {job.id}: {action} {when}" + (f", every {every}" if every else ""))
        if at is None and not no_wait:
            view = _progress(batches, job.id, run_here=True)
            click.echo(f"batch job {job.id}: {_outcome(view)}")
            if view.failed:
                raise SystemExit(1)


@batch_group.command("list")
@site_argument
@click.option("--state", type=click.Choice(["SCHEDULED", "RUNNING", "DONE", "CANCELLED"]))
@click.pass_obj
def batch_list(obj: CliContext, site_file: str, state: str | None) -> None:
    with billing_services(site_file, obj) as c:
        batches = c.batches
        jobs = batches.list(state=state)
    table = Table(
        "Batch jobs",
        [
            "job",
            "action",
            "state",
            "run",
            "done",
            "failed",
            "pending",
            "total",
            "next run",
            "every",
            "created by",
            "reason",
        ],
    )
    for j in jobs:
        nxt = (
            j.next_run_at.astimezone(c.site.info.tz).strftime("%Y-%m-%d %H:%M")
            if j.next_run_at
            else ""
        )
        table.rows.append(
            [
                str(j.id),
                j.action,
                j.state,
                str(j.run_no),
                str(j.done),
                str(j.failed),
                str(j.total - j.done - j.failed),
                str(j.total),
                nxt,
                j.every or "",
                j.created_by,
                j.reason,
            ]
        )
    echo_table(table)


@batch_group.command("show")
@site_argument
@click.argument("job_id", type=ROW_ID)
@click.option("--run", "run_no", type=ROW_ID, help="Occurrence (default the last).")
@click.pass_obj
def batch_show(obj: CliContext, site_file: str, job_id: int, run_no: int | None) -> None:
    """A job and the result of each of its items (times in the site's time zone)."""
    with billing_services(site_file, obj) as c:
        batches = c.batches
        job = batches.get(job_id)
        items = batches.items(job_id, run_no)
    tz = c.site.info.tz
    n = counts(items)
    click.echo(
        f"batch job {job.id}: {job.action}, {describe_params(job.action, job.params)}; "
        f"on {describe_selection(job.selection)}"
    )
    click.echo(f"reason: {job.reason}")
    click.echo(
        f"created by {job.created_by} at {local_time(job.created_at, tz)} (times: {tz})"
        + (f"; repeats every {job.every}" if job.every else "")
        + (f"; next run {local_time(job.next_run_at, tz)}" if job.next_run_at else "")
    )
    if job.state == "CANCELLED" and job.last_error:
        click.echo(f"{job.last_error} at {local_time(job.finished_at, tz)}")
    # The job row knows the times of its last occurrence only.
    last = run_no is None or run_no == job.run_no
    when = (
        f"{job.state}, started {local_time(job.started_at, tz)}, "
        f"finished {local_time(job.finished_at, tz)}: "
        if last
        else ""
    )
    click.echo(
        f"occurrence {run_no or job.run_no}: {when}{n.succeeded} succeeded, "
        f"{n.failed} failed, {n.pending} pending of {n.total}"
    )
    table = Table("", ["#", "target", "who", "state", "result", "updated"])
    for i in items:
        updated = local_time(i.updated_at, tz)
        table.rows.append([str(i.seq), i.target, i.who, i.state, i.result, updated])
    echo_table(table)


@batch_group.command("run")
@site_argument
@click.argument("job_id", type=ROW_ID)
@click.pass_obj
def batch_run(obj: CliContext, site_file: str, job_id: int) -> None:
    """Run a due job here with a progress bar (or follow it if the service runs it)."""
    with billing_services(site_file, obj) as c:
        batches = c.batches
        view = batches.get(job_id)
        if view.state == "SCHEDULED" and view.next_run_at and view.next_run_at > utcnow():
            raise RequestError(
                "job",
                f"batch job {job_id} is scheduled for "
                f"{view.next_run_at.astimezone(c.site.info.tz):%Y-%m-%d %H:%M}",
            )
        view = _progress(batches, job_id, run_here=True)
    click.echo(f"batch job {job_id}: {view.state}, {_outcome(view)}")


@batch_group.command("cancel")
@site_argument
@click.argument("job_id", type=ROW_ID)
@click.pass_obj
def batch_cancel(obj: CliContext, site_file: str, job_id: int) -> None:
    with billing_services(site_file, obj) as c:
        batches = c.batches
        view = batches.cancel(job_id, actor=operator())
    click.echo(f"batch job {job_id}: {view.state}")
