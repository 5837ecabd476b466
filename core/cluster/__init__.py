"""Several instances on one PostgreSQL (issue 13): links owned through fenced leases.

- `settings` reads the site file's `[cluster]` section (absent: one process, nothing
  changes).
- `lease` is the SQL: a `link_lease` row per link with owner, epoch and an expiry from the
  database clock; acquire, renew and release are single atomic UPDATE ... WHERE statements.
- `manager` is the service: it heartbeats, takes the links this instance may own when they
  are free, starts and stops their workers in the link arbiter, and gives a link up before
  its local deadline (expiry minus a margin larger than the slowest command).
- `leader` runs jobs that must run once under a leader lease of the same kind.

Fencing lives on the command path (`core.prepay.commands`): a claim and a completion must
carry the link's current epoch, or the database refuses them (`CommandFenced`).
See docs/cluster.md.
"""
