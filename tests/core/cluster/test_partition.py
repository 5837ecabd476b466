"""A real partition between an instance and PostgreSQL: the instance runs in a network
namespace of its own (`ip netns`), reaching PostgreSQL and the gateway over a veth pair, and
an nftables rule in that namespace drops its packets to PostgreSQL (not a closed socket: the
silence of a cut cable). It must go quiet on the link before another instance starts on it.

Needs root (CAP_NET_ADMIN), `ip` and `nft` (apt `nftables`, installed by dev.sh); skipped
with the reason otherwise."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import until

from .instances import CLUSTER, Instance, instance_site
from .relay import Relay
from .test_failover import Cluster, cluster, one_speaker_at_a_time, owned_by

__all__ = ["cluster"]  # the fixture: three instances' relays and the simulated gateway

#: The veth pair's addresses: a /30 of its own per run (runs at once do not collide).
_NET = secrets.randbelow(250) + 1
HOST_IP, NS_IP = f"10.213.{_NET}.1", f"10.213.{_NET}.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace joined to this one by a veth pair (HOST_IP here, NS_IP there)."""
    if shutil.which("nft") is None or shutil.which("ip") is None:
        pytest.skip("needs `ip` and `nft` (apt nftables; ./dev.sh setup installs it)")
    tag = secrets.token_hex(3)
    name, host_end, ns_end = f"op-{tag}", f"oph{tag}", f"opn{tag}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here (root, CAP_NET_ADMIN): {exc.stderr}")
    try:
        _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        _ip("link", "set", ns_end, "netns", name)
        _ip("addr", "add", f"{HOST_IP}/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{NS_IP}/30", "dev", ns_end)
        _ip("netns", "exec", name, "ip", "link", "set", ns_end, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)


def drop_to(netns: str, port: int) -> None:
    """In the namespace: drop every packet to HOST_IP:port (PostgreSQL's relay)."""
    rules = (
        "add table inet partition\n"
        "add chain inet partition out { type filter hook output priority 0; }\n"
        f"add rule inet partition out ip daddr {HOST_IP} tcp dport {port} drop\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"],
        input=rules,
        check=True,
        capture_output=True,
        text=True,
    )


async def test_an_nftables_partition_gives_links_up_before_another_takes_them(
    cluster: Cluster, netns: str, pg_url: str, tmp_path: Path
) -> None:
    c = cluster
    url = make_url(pg_url)
    # What c reaches over the veth pair: PostgreSQL and the gateway, through plain relays
    # (the gateway's relay logs c's frames; the PostgreSQL one only forwards).
    pg_relay = Relay((url.host or "127.0.0.1", url.port or 5432), "pg")
    pg_port = await pg_relay.start(HOST_IP)
    await c.relays["c"].stop()
    c.relays["c"] = Relay(c.sims.addresses["gw"], "c", modbus=True)
    gw_port = await c.relays["c"].start(HOST_IP)
    site = instance_site(
        tmp_path / "namespaced",
        "c",
        url.set(host=HOST_IP, port=pg_port).render_as_string(hide_password=False),
        gw_port,
        HOST_IP,
    )
    c.instances["c"] = Instance("c", site, prefix=("ip", "netns", "exec", netns))
    try:
        await c.instances["c"].start()
        await owned_by(c, ("c",))
        await until(lambda: c.frames_of("c"), 30)
        await c.instances["a"].start()
        drop_to(netns, pg_port)
        cut_at = time.monotonic()
        new = await owned_by(c, ("a",), timeout=CLUSTER["lease_ttl_s"] * 10)
        await until(lambda: c.frames_of(new, cut_at), 30)
        first_new = c.frames_of(new, cut_at)[0].at
        last_c = max(f.at for f in c.relays["c"].frames)
        assert last_c < first_new, "c still talked to the link when a started on it"
        assert c.instances["c"].logged("link gw: given up by c"), "".join(c.instances["c"].log)
        one_speaker_at_a_time(c, 1)
    finally:
        await c.instances["c"].kill()
        await pg_relay.stop()
