"""An Alipay open-platform emulator on loopback, for the Alipay plugin's tests.

A real aiohttp server on 127.0.0.1 (port 0) with its own RSA key pair, standing in for
Alipay: it checks every request's RSA2 signature with the app's public key (and the
common parameters), keeps trades the way Alipay does (a precreated QR becomes a trade only
when scanned), answers signed JSON, and — when a test "scans and pays" — POSTs signed
notifications to the order's notify_url: once, in concurrent copies, with a bad
signature, with another amount, or not at all (lost). It serves a trade bill as Alipay
does (a zip of GBK CSVs behind a short-lived URL) from the paid trades, with rows added or
left out on request.

Its signing code is written here on purpose, not imported from the plugin: the plugin is
checked against a second reading of Alipay's rules, not against itself.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import itertools
import json
import secrets
import zipfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

BEIJING = ZoneInfo("Asia/Shanghai")
FMT = "%Y-%m-%d %H:%M:%S"
COMMON = ("app_id", "method", "format", "charset", "sign_type", "timestamp", "version")


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> bytes:
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def rsa2(key: rsa.RSAPrivateKey, text: str) -> str:
    raw = key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(raw).decode()


def yuan(fen: int) -> str:
    return f"{Decimal(fen).scaleb(-2):.2f}"


def fen(text: str) -> int:
    value = Decimal(text)
    assert value == value.quantize(Decimal("0.01")), text
    return int(value.scaleb(2))


@dataclass
class Trade:
    out_trade_no: str
    total_fen: int
    subject: str
    notify_url: str | None
    timeout_express: str
    scanned: bool = False
    status: str = "WAIT_BUYER_PAY"
    trade_no: str = ""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    paid_at: datetime | None = None
    #: out_request_no → refunded fen (the same number refunds once).
    refunds: dict[str, int] = field(default_factory=dict)
    last_refund: str | None = None


@dataclass
class Delivery:
    """One notification POST and what our side answered."""

    out_trade_no: str
    status: int
    body: str


@dataclass
class BillRow:
    out_trade_no: str
    trade_no: str
    amount_fen: int
    kind: str = "交易"  # or "退款"
    at: datetime | None = None
    refund_no: str = ""


class AlipayEmulator:
    """Start with `await emulator.start()`; `gateway` is then the URL to configure."""

    def __init__(self, app_id: str, seller_id: str, app_public_key: rsa.RSAPublicKey) -> None:
        self.app_id = app_id
        self.seller_id = seller_id
        self.app_public_key = app_public_key
        self.key = new_key()  # "Alipay's" key pair
        self.trades: dict[str, Trade] = {}
        #: Every request as (method, biz_content) once its signature verified.
        self.calls: list[tuple[str, dict[str, Any]]] = []
        #: Why requests were refused (bad signature, missing parameter...).
        self.refused: list[str] = []
        self.deliveries: list[Delivery] = []
        #: Sign answers with this key instead (a forged gateway / man in the middle).
        self.answer_key: rsa.RSAPrivateKey | None = None
        self.bills: dict[str, bytes] = {}
        self._bill_days: dict[date, str] = {}
        self._numbers = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.base = ""

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/gateway.do", self._gateway)
        app.router.add_get("/bill/{token}", self._bill)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"
        return self.gateway

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def gateway(self) -> str:
        return f"{self.base}/gateway.do"

    @property
    def public_key_pem(self) -> bytes:
        return public_pem(self.key)

    # -- the gateway ----------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.Response:
        form = await request.post()
        params = {k: str(v) for k, v in form.items()}
        method = params.get("method", "")
        problem = self._check(params)
        if problem:
            self.refused.append(problem)
            return self._answer("error_response", self._error("40002", problem, "isv.invalid"))
        biz = json.loads(params.get("biz_content") or "{}")
        self.calls.append((method, biz))
        handler = {
            "alipay.trade.precreate": self._precreate,
            "alipay.trade.query": self._query,
            "alipay.trade.close": self._close,
            "alipay.trade.refund": self._refund,
            "alipay.trade.fastpay.refund.query": self._refund_query,
            "alipay.data.dataservice.bill.downloadurl.query": self._bill_url,
        }.get(method)
        node = method.replace(".", "_") + "_response"
        if handler is None:
            return self._answer("error_response", self._error("40004", "no method", "isv.x"))
        return self._answer(node, handler(biz, params))

    def _check(self, params: dict[str, str]) -> str | None:
        missing = [k for k in (*COMMON, "sign", "biz_content") if not params.get(k)]
        if missing:
            return f"missing {', '.join(missing)}"
        if params["app_id"] != self.app_id:
            return "isv.invalid-app-id"
        wanted = {"format": "JSON", "charset": "utf-8", "sign_type": "RSA2", "version": "1.0"}
        for key, value in wanted.items():
            if params[key] != value:
                return f"{key} {params[key]!r}"
        try:
            sent = datetime.strptime(params["timestamp"], FMT).replace(tzinfo=BEIJING)
        except ValueError:
            return f"timestamp {params['timestamp']!r}"
        if abs((datetime.now(UTC) - sent).total_seconds()) > 15 * 60:
            return "timestamp is not Beijing time now"
        content = "&".join(
            f"{k}={params[k]}" for k in sorted(params) if k != "sign" and params[k] != ""
        )
        try:
            self.app_public_key.verify(
                base64.b64decode(params["sign"]),
                content.encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            return "isv.invalid-signature"
        return None

    def _answer(self, node: str, body: dict[str, Any]) -> web.Response:
        # Alipay's answers are compact JSON with Chinese as is; the sign covers the object's text.
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        sign = rsa2(self.answer_key or self.key, text)
        raw = f'{{"{node}":{text},"sign":"{sign}"}}'
        return web.Response(text=raw, content_type="text/html", charset="utf-8")

    @staticmethod
    def _ok(**fields: Any) -> dict[str, Any]:
        return {"code": "10000", "msg": "Success", **fields}

    @staticmethod
    def _error(code: str, sub_msg: str, sub_code: str) -> dict[str, Any]:
        return {"code": code, "msg": "Business Failed", "sub_code": sub_code, "sub_msg": sub_msg}

    def _not_exist(self) -> dict[str, Any]:
        return self._error("40004", "交易不存在", "ACQ.TRADE_NOT_EXIST")

    def _precreate(self, biz: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        number = biz["out_trade_no"]
        if number in self.trades and self.trades[number].status != "WAIT_BUYER_PAY":
            return self._error("40004", "交易已经支付", "ACQ.TRADE_HAS_SUCCESS")
        trade = Trade(
            number,
            fen(biz["total_amount"]),
            biz["subject"],
            params.get("notify_url"),
            biz.get("timeout_express", ""),
        )
        self.trades[number] = trade
        return self._ok(out_trade_no=number, qr_code=f"https://qr.alipay.com/bax0{number}")

    def _query(self, biz: dict[str, Any], _: dict[str, str]) -> dict[str, Any]:
        trade = self.trades.get(biz.get("out_trade_no", ""))
        if trade is None or not trade.scanned:
            return self._not_exist()
        out = self._ok(
            trade_no=trade.trade_no,
            out_trade_no=trade.out_trade_no,
            buyer_logon_id="159****5620",
            trade_status=trade.status,
            total_amount=yuan(trade.total_fen),
        )
        if trade.paid_at is not None:
            out["send_pay_date"] = trade.paid_at.astimezone(BEIJING).strftime(FMT)
        return out

    def _close(self, biz: dict[str, Any], _: dict[str, str]) -> dict[str, Any]:
        trade = self.trades.get(biz.get("out_trade_no", ""))
        if trade is None or not trade.scanned:
            if trade is not None:
                trade.status = "TRADE_CLOSED"  # the QR no longer pays
            return self._not_exist()
        if trade.status != "WAIT_BUYER_PAY":
            return self._error("40004", "交易状态不合法", "ACQ.TRADE_STATUS_ERROR")
        trade.status = "TRADE_CLOSED"
        return self._ok(trade_no=trade.trade_no, out_trade_no=trade.out_trade_no)

    def _refund(self, biz: dict[str, Any], _: dict[str, str]) -> dict[str, Any]:
        trade = self.trades.get(biz.get("out_trade_no", ""))
        if trade is None or not trade.scanned:
            return self._not_exist()
        if trade.paid_at is None:
            return self._error("40004", "交易状态不合法", "ACQ.TRADE_STATUS_ERROR")
        number = biz["out_request_no"]
        amount = fen(biz["refund_amount"])
        change = "N"
        if number not in trade.refunds:
            if amount > trade.total_fen - sum(trade.refunds.values()):
                return self._error("40004", "退款金额超限", "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL")
            trade.refunds[number] = amount
            trade.last_refund = number
            change = "Y"
            if sum(trade.refunds.values()) == trade.total_fen:
                trade.status = "TRADE_CLOSED"
        return self._ok(
            trade_no=trade.trade_no,
            out_trade_no=trade.out_trade_no,
            buyer_logon_id="159****5620",
            fund_change=change,
            refund_fee=yuan(sum(trade.refunds.values())),
        )

    def _refund_query(self, biz: dict[str, Any], _: dict[str, str]) -> dict[str, Any]:
        trade = self.trades.get(biz.get("out_trade_no", ""))
        if trade is None or not trade.scanned:
            return self._not_exist()
        number = biz.get("out_request_no", "")
        if number not in trade.refunds:
            # Alipay's way of saying "not refunded": success without the refund's fields.
            return self._ok(out_trade_no=trade.out_trade_no, trade_no=trade.trade_no)
        return self._ok(
            trade_no=trade.trade_no,
            out_trade_no=trade.out_trade_no,
            out_request_no=number,
            total_amount=yuan(trade.total_fen),
            refund_amount=yuan(trade.refunds[number]),
            refund_status="REFUND_SUCCESS",
        )

    def _bill_url(self, biz: dict[str, Any], _: dict[str, str]) -> dict[str, Any]:
        day = date.fromisoformat(biz["bill_date"])
        if biz.get("bill_type") != "trade" or day not in self._bill_days:
            return self._error("40004", "账单不存在", "isp.bill_not_exist")
        return self._ok(bill_download_url=f"{self.base}/bill/{self._bill_days[day]}")

    async def _bill(self, request: web.Request) -> web.Response:
        data = self.bills.get(request.match_info["token"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/oct-stream")

    # -- what a test does as the payer ----------------------------------------------------
    def scan(self, out_trade_no: str) -> Trade:
        """The payer scans the QR: the trade now exists at Alipay, waiting for payment."""
        trade = self.trades[out_trade_no]
        if not trade.scanned:
            trade.scanned = True
            trade.trade_no = f"2026120222001{next(self._numbers):013d}"
        return trade

    async def pay(
        self,
        out_trade_no: str,
        *,
        copies: int = 1,
        lost: bool = False,
        bad_signature: bool = False,
        amount_fen: int | None = None,
        at: datetime | None = None,
    ) -> list[Delivery]:
        """Scan and pay; then notify (unless `lost`), `copies` times at once."""
        trade = self.scan(out_trade_no)
        trade.status = "TRADE_SUCCESS"
        trade.paid_at = at or datetime.now(UTC)
        if lost:
            return []
        overrides = {} if amount_fen is None else {"total_amount": yuan(amount_fen)}
        key = new_key() if bad_signature else None
        sends = [self.notify(out_trade_no, key=key, **overrides) for _ in range(copies)]
        return list(await asyncio.gather(*sends))

    def notification(self, out_trade_no: str, **overrides: str) -> dict[str, str]:
        """The fields Alipay sends for the trade's current state (unsigned)."""
        trade = self.trades[out_trade_no]
        now = datetime.now(UTC).astimezone(BEIJING)
        fields = {
            "gmt_create": trade.created_at.astimezone(BEIJING).strftime(FMT),
            "charset": "utf-8",
            "seller_email": "shop@example.com",
            "subject": trade.subject,
            "buyer_id": "2088102177846880",
            "invoice_amount": yuan(trade.total_fen),
            "notify_id": f"2026120200222{abs(hash(out_trade_no)) % 10**12:012d}",
            "fund_bill_list": json.dumps(
                [{"amount": yuan(trade.total_fen), "fundChannel": "ALIPAYACCOUNT"}],
                separators=(",", ":"),
            ),
            "notify_type": "trade_status_sync",
            "trade_status": trade.status,
            "receipt_amount": yuan(trade.total_fen),
            "app_id": self.app_id,
            "buyer_pay_amount": yuan(trade.total_fen),
            "seller_id": self.seller_id,
            "notify_time": now.strftime(FMT),
            "version": "1.0",
            "out_trade_no": trade.out_trade_no,
            "total_amount": yuan(trade.total_fen),
            "trade_no": trade.trade_no,
            "auth_app_id": self.app_id,
            "buyer_logon_id": "159****5620",
            "point_amount": "0.00",
        }
        if trade.paid_at is not None:
            fields["gmt_payment"] = trade.paid_at.astimezone(BEIJING).strftime(FMT)
        if trade.refunds:
            fields["refund_fee"] = yuan(sum(trade.refunds.values()))
            fields["out_biz_no"] = trade.last_refund or ""
            fields["gmt_refund"] = now.strftime(FMT) + ".000"
        fields.update(overrides)
        return fields

    def signed_body(self, fields: dict[str, str], key: rsa.RSAPrivateKey | None = None) -> bytes:
        """The form body of a notification: signed over sorted k=v (sign, sign_type out)."""
        content = "&".join(
            f"{k}={fields[k]}" for k in sorted(fields) if k not in ("sign", "sign_type")
        )
        signed = {**fields, "sign_type": "RSA2", "sign": rsa2(key or self.key, content)}
        return urlencode(signed).encode()

    async def notify(
        self, out_trade_no: str, key: rsa.RSAPrivateKey | None = None, **overrides: str
    ) -> Delivery:
        """POST the trade's notification to its notify_url, as Alipay does."""
        trade = self.trades[out_trade_no]
        assert trade.notify_url, "the order was created without notify_url"
        body = self.signed_body(self.notification(out_trade_no, **overrides), key)
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(trade.notify_url, data=body, headers=headers) as response,
        ):
            delivery = Delivery(out_trade_no, response.status, await response.text())
        self.deliveries.append(delivery)
        return delivery

    # -- the bill -------------------------------------------------------------------------
    def publish_bill(
        self, day: date, *, extra: Sequence[BillRow] = (), missing: Collection[str] = ()
    ) -> list[BillRow]:
        """The day's bill (Beijing date) from the trades paid and refunded that day, without
        the trades in `missing` and with `extra` rows; served as Alipay serves it."""
        rows: list[BillRow] = []
        for trade in self.trades.values():
            if trade.paid_at is None or trade.out_trade_no in missing:
                continue
            if trade.paid_at.astimezone(BEIJING).date() != day:
                continue
            rows.append(
                BillRow(trade.out_trade_no, trade.trade_no, trade.total_fen, at=trade.paid_at)
            )
            for number, refunded in trade.refunds.items():
                rows.append(
                    BillRow(
                        trade.out_trade_no, trade.trade_no, refunded, "退款", trade.paid_at, number
                    )
                )
        rows.extend(extra)
        token = secrets.token_hex(8)
        self.bills[token] = bill_zip(self.seller_id, day, rows)
        self._bill_days[day] = token
        return rows


HEADER = [
    "支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间", "门店编号",
    "门店名称", "操作员", "终端号", "对方账户", "订单金额（元）", "商家实收（元）",
    "支付宝红包（元）", "集分宝（元）", "支付宝优惠（元）", "商家优惠（元）", "券核销金额（元）",
    "券名称", "商家红包消费金额（元）", "卡消费金额（元）", "退款批次号/请求号", "服务费（元）",
    "分润（元）", "备注",
]  # fmt: skip


class GbkName(zipfile.ZipInfo):
    """A member name written as GBK bytes without the UTF-8 flag (bit 11), as Alipay's
    zips have them (Python's zipfile would write UTF-8 and set the flag)."""

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:
        return self.filename.encode("gbk"), self.flag_bits & ~0x800


def bill_zip(seller_id: str, day: date, rows: list[BillRow]) -> bytes:
    """A zip as Alipay makes it: GBK CSVs, GBK member names without the UTF-8 flag, a
    detail file with `#` lines around the table, values padded with tabs, and a summary."""
    text = io.StringIO()
    out = csv.writer(text, lineterminator="\r\n")
    text.write(f"#支付宝业务明细查询\r\n#账号：[{seller_id}0156]\r\n")
    text.write(
        f"#起始日期：[{day:%Y年%m月%d日} 00:00:00]   终止日期：[{day:%Y年%m月%d日} 23:59:59]\r\n"
    )
    text.write(
        "#-----------------------------------------业务明细列表----------------------------------------\r\n"
    )
    out.writerow(HEADER)
    total = 0
    for row in rows:
        sign = "-" if row.kind == "退款" else ""
        total += -row.amount_fen if sign else row.amount_fen
        at = (row.at or datetime.now(UTC)).astimezone(BEIJING).strftime(FMT)
        cells = {
            "支付宝交易号": row.trade_no + "\t",
            "商户订单号": row.out_trade_no + "\t",
            "业务类型": row.kind,
            "商品名称": "电费充值",
            "创建时间": at,
            "完成时间": at,
            "订单金额（元）": sign + yuan(row.amount_fen),
            "商家实收（元）": sign + yuan(row.amount_fen),
            "退款批次号/请求号": row.refund_no + ("\t" if row.refund_no else ""),
            "服务费（元）": "0.00",
        }
        out.writerow([cells.get(name, "") for name in HEADER])
    text.write(
        "#-----------------------------------------业务明细列表结束------------------------------------\r\n"
    )
    text.write(f"#交易合计：{len(rows)}笔，商家实收共{yuan(total)}元\r\n")
    text.write(f"#导出时间：[{datetime.now(BEIJING):%Y年%m月%d日 %H:%M:%S}]\r\n")
    stamp = day.strftime("%Y%m%d")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, body in (
            (f"{seller_id}0156_{stamp}_业务明细.csv", text.getvalue()),
            (f"{seller_id}0156_{stamp}_业务明细(汇总).csv", f"#汇总\r\n合计,{yuan(total)}\r\n"),
        ):
            info = GbkName(name, date_time=(day.year, day.month, day.day, 10, 0, 0))
            archive.writestr(info, body.encode("gbk"))
    return buffer.getvalue()
