"""WeChat Pay notifications: how many a second are verified, decrypted and credited, and how
long from a notification received to the tenant's relay read back closed.

The whole runtime runs on SQLite with the web service on loopback and a simulated RS-485
gateway (RTU over TCP, 9600-baud serial timing) of 41 polled prepaid meters.

1. Bare top-up rate (the baseline, same run): `Operations.topup` from CONCURRENCY threads,
   as the CLI, OPC UA cashiers and batch jobs call it (group commit included).
2. Notification rate: ORDERS orders opened through the door, their WeChat Pay v3
   notifications signed (RSA-SHA256 with the WeChat Pay public key, resource sealed with
   AES-256-GCM under the APIv3 key) beforehand, then POSTed to `/pay/notify/wechat` by a
   separate load process (CONCURRENCY connections at once, as WeChat's senders do) — each
   verified over the raw body, decrypted, stored and credited through the same top-up.
   The load process is lean on purpose (pre-built HTTP/1.1 requests written on raw
   keep-alive asyncio streams, not an HTTP client library): WeChat Pay's senders are not on
   our machine, here they share its two cores with the service.
   The clock runs from the first POST until every order is CREDITED in the database.
3. Latency: an account in arrears whose relay is tripped; its order's notification is
   POSTed and the clock stops at the `SupplyChanged` that follows the relay's read-back
   (verify, store + credit, fee control, durable command, executor, arbiter, write, read).

Targets: notify_per_s ≥ 500 and ratio (notify_per_s / topup_per_s) ≥ 0.5;
notify_to_close_median_ms ≤ 1500. Ends with one JSON line.
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

os.environ.setdefault("OPENPREPAY_DISABLE_PLUGINS", "opcua,historian")

import sqlalchemy as sa
from _site import GATEWAY, gateway_runtime, gateway_site_data, percentile
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.config.site import parse_site
from openprepay.core.db import schema as t
from openprepay.core.events import SupplyChanged
from openprepay.core.prepay import accounts as acc

ORDERS = int(os.environ.get("OPENPREPAY_BENCH_ORDERS", "3000"))
#: Both rates are measured in this many alternating slices; the median of each is reported.
SLICES = 3
CONCURRENCY = 64
#: Accounts without meters that take the throughput rounds' money (spread: no one
#: account's hoarding limit is reached).
ACCOUNTS = 40
AMOUNT_FEN = 100
ROUNDS = 15
MCHID = "1900000109"
APPID = "wxd678efh567hg6787"
PUBLIC_KEY_ID = "PUB_KEY_ID_0114232134912410000000000000"


def site_data(folder: Path, port: int) -> dict[str, Any]:
    return {
        **gateway_site_data(),
        "web": {"bind": "127.0.0.1", "port": port, "public_base_url": f"http://127.0.0.1:{port}"},
        "payments": {
            "minimum": "1.00",
            # The orders here are notified at once: no active query of the (absent) API.
            "query_after_s": 600,
            "wechat": {
                "mchid": MCHID,
                "appid": APPID,
                "private_key_file": str(folder / "apiclient_key.pem"),
                "merchant_serial": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
                "apiv3_key_file": str(folder / "apiv3.key"),
                "public_key_file": str(folder / "pub_key.pem"),
                "public_key_id": PUBLIC_KEY_ID,
                "base_url": "http://127.0.0.1:9",  # never called: orders opened in the door
            },
        },
    }


class WechatSender:
    """WeChat Pay's side of a notification: the transaction object sealed under the APIv3
    key, the envelope signed with the WeChat Pay public key's private half."""

    def __init__(self, folder: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.apiv3 = secrets.token_hex(16).encode()  # 32 bytes
        merchant = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (folder / "apiclient_key.pem").write_bytes(
            merchant.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (folder / "pub_key.pem").write_bytes(
            self.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        (folder / "apiv3.key").write_bytes(self.apiv3 + b"\n")

    def notification(self, out_trade_no: str, amount_fen: int) -> tuple[dict[str, str], bytes]:
        now = datetime.now(UTC).replace(microsecond=0)
        obj = {
            "appid": APPID,
            "mchid": MCHID,
            "out_trade_no": out_trade_no,
            "transaction_id": "42000" + secrets.token_hex(12),
            "trade_type": "NATIVE",
            "trade_state": "SUCCESS",
            "trade_state_desc": "支付成功",
            "bank_type": "OTHERS",
            "success_time": now.isoformat(),
            "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
            "amount": {
                "total": amount_fen,
                "payer_total": amount_fen,
                "currency": "CNY",
                "payer_currency": "CNY",
            },
        }
        nonce = secrets.token_hex(6)
        sealed = AESGCM(self.apiv3).encrypt(
            nonce.encode(), json.dumps(obj, ensure_ascii=False).encode(), b"transaction"
        )
        envelope = {
            "id": secrets.token_hex(16),
            "create_time": now.isoformat(),
            "resource_type": "encrypt-resource",
            "event_type": "TRANSACTION.SUCCESS",
            "summary": "支付成功",
            "resource": {
                "original_type": "transaction",
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": base64.b64encode(sealed).decode(),
                "associated_data": "transaction",
                "nonce": nonce,
            },
        }
        body = json.dumps(envelope, ensure_ascii=False).encode()
        stamp = str(int(time.time()))
        header_nonce = secrets.token_hex(16).upper()
        message = f"{stamp}\n{header_nonce}\n".encode() + body + b"\n"
        signature = self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        headers = {
            "Wechatpay-Timestamp": stamp,
            "Wechatpay-Nonce": header_nonce,
            "Wechatpay-Signature": base64.b64encode(signature).decode(),
            "Wechatpay-Serial": PUBLIC_KEY_ID,
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
            "Content-Type": "application/json",
        }
        return headers, body


# -- the load process ---------------------------------------------------------------------


def _request_bytes(url: str, headers: dict[str, str], body: bytes) -> bytes:
    """One complete HTTP/1.1 keep-alive POST, built before the clock starts."""
    parts = urlsplit(url)
    head = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _read_status(reader: asyncio.StreamReader) -> int:
    """The status of one HTTP/1.1 answer, its body (if any) read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return int(lines[0].split()[1])


def _post_all(url: str, notes: list[tuple[dict[str, str], bytes]], out: Any) -> None:
    """In a process of its own: POST every note, CONCURRENCY at a time on keep-alive
    connections; reports when it started (CLOCK_MONOTONIC: the same clock in every
    process) and the answers.

    A lean sender on purpose: every request is built as bytes before the clock starts and
    written on a raw asyncio stream, the answer's status line and length read back. WeChat
    Pay's senders are not on our machine; here they share its two cores with the service,
    so the less CPU they take, the closer the figure is to what the service does alone."""
    requests = [_request_bytes(url, headers, body) for headers, body in notes]
    parts = urlsplit(url)

    async def run() -> tuple[float, list[int]]:
        statuses: list[int] = []
        queue = list(reversed(requests))
        connections = [
            await asyncio.open_connection(parts.hostname, parts.port) for _ in range(CONCURRENCY)
        ]

        async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while queue:
                writer.write(queue.pop())
                statuses.append(await _read_status(reader))

        started = time.monotonic()
        await asyncio.gather(*(worker(r, w) for r, w in connections))
        for _, w in connections:
            w.close()
        return started, statuses

    out.put(asyncio.run(run()))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def credited(runtime: Runtime) -> int:
    assert runtime.db is not None
    o = t.payment_order
    with runtime.db.read() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(o).where(o.c.state == "CREDITED")
            ).scalar_one()
        )


async def main() -> dict[str, Any]:
    plugins = Plugins.load()
    folder = Path(tempfile.mkdtemp(prefix="openprepay-bench-payments-"))
    sender = WechatSender(folder)
    port = free_port()
    data = site_data(folder, port)
    async with SimulatedSite(parse_site(data), plugins, GATEWAY) as sims:
        runtime = gateway_runtime(data, sims, folder, plugins)
        async with runtime:
            ops = runtime.operations
            assert ops is not None and runtime.db is not None and runtime.payments is not None
            url = f"http://127.0.0.1:{port}/pay/notify/wechat"
            with runtime.db.begin() as conn:
                meter = acc.resolve_meter(runtime.site, plugins.models, "E1")
                acc.create_account(conn, acc.AccountSpec("A-1", "bench", (meter,)))
                for i in range(ACCOUNTS):
                    acc.create_account(conn, acc.AccountSpec(f"B-{i}", "bench", ()))
            pool = ThreadPoolExecutor(CONCURRENCY)
            loop = asyncio.get_running_loop()

            # 1. The bare top-up rate (and 2. below), each in SLICES slices.
            async def topups(n: int, tag: str) -> float:
                start = time.perf_counter()
                await asyncio.gather(
                    *(
                        loop.run_in_executor(
                            pool,
                            lambda i=i: ops.topup(
                                f"B-{i % ACCOUNTS}", AMOUNT_FEN, f"{tag}-{i}", actor="bench"
                            ),
                        )
                        for i in range(n)
                    )
                )
                return time.perf_counter() - start

            # 2. The notification rate.
            async def notifications(n: int) -> tuple[float, list[int]]:
                orders = await asyncio.gather(
                    *(
                        loop.run_in_executor(
                            pool,
                            lambda i=i: ops.open_payment(
                                f"B-{i % ACCOUNTS}", AMOUNT_FEN, "wechat", "native", actor="bench"
                            ),
                        )
                        for i in range(n)
                    )
                )
                notes = [sender.notification(o.out_trade_no, AMOUNT_FEN) for o in orders]
                before = credited(runtime)
                context = multiprocessing.get_context("spawn")
                out = context.Queue()
                load = context.Process(target=_post_all, args=(url, notes, out), daemon=True)
                load.start()
                print("notifications: sending", file=sys.stderr, flush=True)
                # Counted in a thread: the service's event loop answers the callbacks.
                while await asyncio.to_thread(credited, runtime) < before + n:
                    await asyncio.sleep(0.05)
                done = time.monotonic()
                started, statuses = await loop.run_in_executor(None, out.get)
                load.join(10)
                return done - started, statuses

            # Alternating slices of both: a burst of load from elsewhere on the machine
            # weighs on both rates alike.
            await topups(200, "warm")
            topup_rates, notify_rates, statuses = [], [], []
            for r in range(SLICES):
                n = ORDERS // SLICES
                topup_rates.append(n / await topups(n, f"bare{r}"))
                took, answers = await notifications(n)
                notify_rates.append(n / took)
                statuses.extend(answers)
            answered = {s: statuses.count(s) for s in set(statuses)}

            # 3. Notification → relay closed.
            changes: asyncio.Queue[SupplyChanged] = asyncio.Queue()
            runtime.bus.subscribe(SupplyChanged, changes.put_nowait)

            async def supply(on: bool) -> float:
                while True:
                    event = await asyncio.wait_for(changes.get(), 30)
                    if event.meter_id == "E1" and event.on is on:
                        return time.perf_counter()

            await asyncio.to_thread(ops.topup, "A-1", 1000, "warm-up", actor="bench")
            await asyncio.to_thread(ops.refund, "A-1", 1000, "warm-up-r", actor="bench")
            await supply(False)
            await asyncio.sleep(2)  # let the poll cycle of 41 meters settle in
            import aiohttp

            latencies = []
            async with aiohttp.ClientSession() as session:
                for i in range(ROUNDS):
                    order = await asyncio.to_thread(
                        ops.open_payment, "A-1", 1000, "wechat", "native", actor="bench"
                    )
                    headers, body = sender.notification(order.out_trade_no, 1000)
                    start = time.perf_counter()
                    async with session.post(url, data=body, headers=headers) as response:
                        assert response.status == 204, await response.text()
                    latencies.append(await supply(True) - start)
                    await asyncio.to_thread(ops.refund, "A-1", 1000, f"r{i}", actor="bench")
                    await supply(False)
            pool.shutdown()
            commits = ops.writer.commits
            requests = ops.writer.requests
    topup_per_s = statistics.median(topup_rates)
    notify_per_s = statistics.median(notify_rates)
    return {
        "bench": "payments",
        "orders": ORDERS,
        "concurrency": CONCURRENCY,
        "slices": SLICES,
        "topup_per_s": round(topup_per_s, 1),
        "notify_per_s": round(notify_per_s, 1),
        "ratio": round(notify_per_s / topup_per_s, 2),
        "answers": answered,
        "requests_per_commit": round(requests / max(commits, 1), 1),
        "rounds": ROUNDS,
        "notify_to_close_median_ms": round(1000 * statistics.median(latencies), 1),
        "notify_to_close_p95_ms": round(1000 * percentile(latencies, 95), 1),
    }


if __name__ == "__main__":
    r = asyncio.run(main())
    print(
        f"WeChat Pay v3 notifications, SQLite, {r['orders']} orders, "
        f"{r['concurrency']} concurrent senders:"
    )
    print(f"  bare top-up  : {r['topup_per_s']:8.1f}/s   (Operations.topup, same concurrency)")
    print(
        f"  notifications: {r['notify_per_s']:8.1f}/s   verified, decrypted, stored and "
        f"credited; ratio {r['ratio']} (targets ≥ 500/s, ≥ 0.5); answers {r['answers']}"
    )
    print(
        f"  notification → relay closed: median {r['notify_to_close_median_ms']:.1f} ms, "
        f"p95 {r['notify_to_close_p95_ms']:.1f} ms over {r['rounds']} rounds (target ≤ 1500)"
    )
    sys.stdout.flush()
    print(json.dumps(r))
