"""The `[cluster]` section of a site file::

    [cluster]
    instance_id = "box-a"          # unique among the instances sharing the database
    links = ["gw-a*", "tcp-7"]     # the links this instance may own (globs; default all)
    lease_ttl_s = 10               # a lease lasts this long past its last renewal (DB clock)
    heartbeat_s = 2                # renew every ...
    margin_s = 3                   # stop using a link this long before the lease expires
    leader = true                  # may run the jobs that must run once (month-end...)

Without the section the service runs as one process, as before. With it the database must be
PostgreSQL (the database clock and row locks are the coordinator).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from ..config.reader import ID_PATTERN, TableReader
from ..config.site import Site
from ..errors import ConfigError, FieldError

DEFAULT_TTL_S = 10.0
DEFAULT_HEARTBEAT_S = 2.0
DEFAULT_MARGIN_S = 3.0


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    instance_id: str
    #: Glob patterns of the link ids this instance may own.
    links: tuple[str, ...] = ("*",)
    lease_ttl_s: float = DEFAULT_TTL_S
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    margin_s: float = DEFAULT_MARGIN_S
    #: May this instance be the jobs leader (month-end and other run-once jobs)?
    leader: bool = True

    def may_own(self, link_id: str) -> bool:
        return any(fnmatch.fnmatchcase(link_id, pattern) for pattern in self.links)


def read_cluster(site: Site) -> ClusterSettings | None:
    """The validated `[cluster]` section, or None without one; errors name the field."""
    if "cluster" not in site.sections:
        return None
    errors: list[FieldError] = []
    r = TableReader(dict(site.sections["cluster"] or {}), "cluster", errors)
    instance_id = r.str(
        "instance_id",
        pattern=ID_PATTERN,
        hint="expected a unique id of letters, digits, '_', '-', '.' (at most 64)",
    )
    links = r.str_list("links", ["*"])
    ttl = r.number("lease_ttl_s", DEFAULT_TTL_S, low=1, high=3600)
    heartbeat = r.number("heartbeat_s", DEFAULT_HEARTBEAT_S, low=0.05, high=600)
    margin = r.number("margin_s", DEFAULT_MARGIN_S, low=0, high=3600, low_exclusive=True)
    leader = r.bool("leader", True)
    r.finish()
    if links is not None:
        if not links:
            r.error(
                "an empty list: this instance could own no link; list globs like 'gw-*'", "links"
            )
        elif not any(fnmatch.filter(site.links, p) for p in links):
            known = ", ".join(sorted(site.links))
            r.error(f"no link of the site matches {links}; links: {known}", "links")
    if None not in (ttl, heartbeat, margin):
        if margin + heartbeat >= ttl:
            r.error(
                f"margin_s ({margin}) + heartbeat_s ({heartbeat}) must be less than "
                f"lease_ttl_s ({ttl}), or a lease lapses between two renewals",
                "lease_ttl_s",
            )
        slowest = max((link.timeout_s for link in site.links.values()), default=0.0)
        if margin <= slowest:
            r.error(
                f"must be larger than the slowest command ({slowest} s, the longest link "
                "timeout_ms), or a paused instance could still be writing when another takes over",
                "margin_s",
            )
    database = str((site.sections.get("database") or {}).get("url", "sqlite"))
    if not database.startswith("postgresql"):
        errors.append(
            FieldError(
                "database.url",
                "[cluster] needs a PostgreSQL database (postgresql://...): the instances "
                "coordinate through its clock and row locks",
            )
        )
    if errors:
        raise ConfigError(str(site.path or "site"), errors)
    return ClusterSettings(instance_id, tuple(links), ttl, heartbeat, margin, bool(leader))
