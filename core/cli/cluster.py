"""`openprepay cluster status SITE`: the instances sharing the site's PostgreSQL and who
owns which link (leases, epochs, seconds left, last heartbeat)."""

from __future__ import annotations

import json

import click

from ..cluster import lease
from ..cluster.settings import read_cluster
from ..errors import OpenPrepayError
from .common import load_checked_site, site_argument
from .database import site_database


@click.group("cluster")
def cluster_group() -> None:
    """Several instances on one PostgreSQL ([cluster] in the site file)."""


@cluster_group.command("status")
@site_argument
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of tables.")
def cluster_status(site_file: str, as_json: bool) -> None:
    """Instances (last heartbeat) and leases (owner, epoch, seconds left) of SITE's database."""
    site = load_checked_site(site_file)
    settings = read_cluster(site)
    if settings is None:
        raise OpenPrepayError(
            f"{site_file} has no [cluster] section: this site runs as one process "
            "(add [cluster] instance_id = ... and a PostgreSQL [database] url)"
        )
    db = site_database(site_file)
    try:
        with db.read() as conn:
            instances = lease.instances(conn)
            leases = lease.leases(conn)
    finally:
        db.dispose()
    ttl = settings.lease_ttl_s
    if as_json:
        click.echo(
            json.dumps(
                {
                    "instances": [{**i, "alive": i["heartbeat_age_s"] < ttl} for i in instances],
                    "leases": [
                        {
                            "name": r.name,
                            "owner": r.owner if _live(r) else None,
                            "epoch": r.epoch,
                            "left_s": max(r.left_s or 0.0, 0.0),
                            "expires_at": r.expires_at,
                        }
                        for r in leases
                    ],
                },
                default=str,
            )
        )
        return
    click.echo(f"instances ({len(instances)}):")
    for i in instances:
        state = "alive" if i["heartbeat_age_s"] < ttl else "silent"
        click.echo(
            f"  {i['id']:<20} {state:<6} last heartbeat {i['heartbeat_age_s']:.1f} s ago  "
            f"{i['host']} pid {i['pid']}  may own {', '.join(i['links'])}"
        )
    click.echo(f"leases ({len(leases)}):")
    for r in leases:
        if _live(r):
            click.echo(
                f"  {r.name:<20} owner {r.owner:<20} epoch {r.epoch:<6} {r.left_s:.1f} s left"
            )
        else:
            click.echo(
                f"  {r.name:<20} FREE{'':<22}epoch {r.epoch:<6} (last owner {r.owner or '-'})"
            )


def _live(row: lease.LeaseRow) -> bool:
    return row.owner is not None and row.left_s is not None and row.left_s > 0


def register(cli: click.Group) -> None:
    cli.add_command(cluster_group)
