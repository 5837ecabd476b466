"""The trade bill: fetched from the emulator (signed answer, signed download, SHA-1), with
extra and missing rows, and parsed from yuan to the fen exactly."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from openprepay.core.contracts import PaymentProvider, PaymentRequest, TradeRecord
from openprepay.plugins.wechatpay.bill import parse_trade_bill
from openprepay.plugins.wechatpay.errors import BillError, WechatPayError
from tests.plugins.wechatpay.emulator import BILL_HEADER, BILL_SUMMARY, WechatPayEmulator

CHINA = timezone(timedelta(hours=8))
DAY = date(2026, 12, 1)


def order(no: str, fen: int) -> PaymentRequest:
    return PaymentRequest(
        out_trade_no=no,
        amount_fen=fen,
        currency="CNY",
        description="电费充值",
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
        method="native",
        notify_url="https://pay.example.com/pay/notify/wechat",
    )


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, hour, minute, tzinfo=CHINA)


async def test_bill_with_extra_and_missing_rows_to_the_fen(
    section: dict[str, Any],
    make_provider: Callable[[dict[str, Any]], PaymentProvider],
    emulator: WechatPayEmulator,
) -> None:
    provider = make_provider(
        {**section, "refund_notify_url": "https://pay.example.com/pay/notify/wechat"}
    )
    amounts = {"OP20261201A101b1": 1, "OP20261201A101b2": 99_999_99, "OP20261201A101b3": 12345}
    for no, fen in amounts.items():
        await provider.create(order(no, fen))
        emulator.pay(no, at=at(9))
    await provider.create(order("OP20261201A101b4", 5000))
    emulator.pay("OP20261201A101b4", at=at(23, 59) + timedelta(minutes=2))  # the next day
    await provider.create(order("OP20261201A101b5", 700))  # never paid: not in the bill
    await provider.refund("OP20261201A101b3", "RF20261201b3", 2345, 12345, "")
    # WeChat has one we never heard of, and lacks one we have.
    emulator.bill_extra.append(
        {
            "appid": "wxd678efh567hg6787",
            "mchid": "1900000109",
            "out_trade_no": "OP20261201GHOST1",
            "transaction_id": "4200009999202612010000000001",
            "success_time": at(10, 30).isoformat(),
            "amount": {"total": 4321, "currency": "CNY"},
        }
    )
    emulator.bill_missing.add("OP20261201A101b2")

    records = await provider.trade_bill(DAY)

    by = {(r.out_trade_no, r.state): r for r in records}
    assert sorted(by) == [
        ("OP20261201A101b1", "PAID"),
        ("OP20261201A101b3", "PAID"),
        ("OP20261201A101b3", "REFUNDED"),
        ("OP20261201GHOST1", "PAID"),
    ]
    assert by[("OP20261201A101b1", "PAID")].amount_fen == 1
    assert by[("OP20261201A101b3", "PAID")].amount_fen == 12345
    refund = by[("OP20261201A101b3", "REFUNDED")]
    assert (refund.amount_fen, refund.refund_fen) == (12345, 2345)
    ghost = by[("OP20261201GHOST1", "PAID")]
    assert (ghost.transaction_id, ghost.amount_fen) == ("4200009999202612010000000001", 4321)
    assert ghost.at == at(10, 30)
    assert (
        by[("OP20261201A101b1", "PAID")].transaction_id
        == (emulator.orders["OP20261201A101b1"]["transaction_id"])
    )
    # The download was a signed GET on the API's own host.
    bill_calls = [c for c in emulator.calls if c[1].startswith("/v3/bill")]
    assert bill_calls[0] == ("GET", "/v3/bill/tradebill?bill_date=2026-12-01&bill_type=ALL")
    assert bill_calls[1][1].startswith("/v3/billdownload/file?token=") and len(bill_calls) == 2


async def test_a_bill_whose_sha1_does_not_match_is_refused(
    provider: PaymentProvider, emulator: WechatPayEmulator
) -> None:
    await provider.create(order("OP20261201A101c1", 100))
    emulator.pay("OP20261201A101c1", at=at(12))
    emulator.spoil_bill_hash = True
    with pytest.raises(BillError) as caught:
        await provider.trade_bill(DAY)
    assert caught.value.where == "hash_value"


async def test_an_empty_day_is_an_empty_bill(
    provider: PaymentProvider, emulator: WechatPayEmulator
) -> None:
    assert await provider.trade_bill(DAY) == []


async def test_a_download_url_on_another_host_is_not_fetched(
    provider: PaymentProvider, emulator: WechatPayEmulator
) -> None:
    # Our Authorization must not be sent to a host the answer names.
    emulator.base_url = "http://127.0.0.2:1"
    with pytest.raises(WechatPayError) as caught:
        await provider.trade_bill(DAY)
    assert caught.value.code == "DOWNLOAD_URL"


def bill(*rows: str) -> bytes:
    return "\r\n".join(
        [BILL_HEADER, *rows, BILL_SUMMARY, "`1,`0.01,`0.00,`0.00,`0.00,`0.01,`0.00"]
    ).encode()


def row(
    amount: str = "0.01",
    refund: str = "0.00",
    state: str = "SUCCESS",
    when: str = "2026-12-01 08:00:00",
) -> str:
    cells = [
        when,
        "wxd678efh567hg6787",
        "1900000109",
        "0",
        "",
        "4200000001",
        "OP20261201x001",
        "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        "NATIVE",
        state,
        "OTHERS",
        "CNY",
        amount,
        "0.00",
        "0",
        "0",
        refund,
        "0.00",
        "",
        "",
        "电费充值",
        "",
        "0.00",
        "0.60%",
        amount,
        refund,
        "",
    ]
    return ",".join("`" + c for c in cells)


@pytest.mark.parametrize(
    ("amount", "fen"),
    [
        ("0.01", 1),
        ("0.10", 10),
        ("1.00", 100),
        ("19.99", 1999),
        ("1234567.89", 123456789),
        ("7", 700),
    ],
)
def test_yuan_become_fen_exactly(amount: str, fen: int) -> None:
    [record] = parse_trade_bill(bill(row(amount)))
    assert record == TradeRecord(
        "OP20261201x001", "4200000001", "PAID", fen, 0, datetime(2026, 12, 1, 8, tzinfo=CHINA)
    )


def test_a_utf8_bom_and_the_summary_are_skipped() -> None:
    records = parse_trade_bill(b"\xef\xbb\xbf" + bill(row("0.30"), row("0.70", "0.70", "REFUND")))
    assert [(r.state, r.amount_fen, r.refund_fen) for r in records] == [
        ("PAID", 30, 0),
        ("REFUNDED", 70, 70),
    ]


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (bill(row("0.001")), "row 2 订单金额"),
        (bill(row("1e3")), "row 2 订单金额"),
        (bill(row("-1.00")), "row 2 订单金额"),
        (bill(row("1,00")), "row 2"),  # a comma in a cell shifts the columns
        (bill(row("0.01", refund="x")), "row 2 退款金额"),
        (bill(row(state="WHATEVER")), "row 2 交易状态"),
        (bill(row(when="2026/12/01 08:00")), "row 2 交易时间"),
        (bill(row(), row("0.0001")), "row 3 订单金额"),
        ("交易时间,微信订单号\r\n`2026-12-01 08:00:00,`1".encode(), "header"),
        (b"\xff\xfe", "file"),
    ],
)
def test_an_unreadable_cell_names_its_row_and_column(content: bytes, where: str) -> None:
    with pytest.raises(BillError) as caught:
        parse_trade_bill(content)
    assert caught.value.where == where
