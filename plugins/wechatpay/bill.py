"""The daily trade bill (交易账单): SHA-1 check and parsing to `TradeRecord`s in fen.

The file is CSV: a header of Chinese column names, one row per trade with every value
prefixed by a backtick (so spreadsheets keep long numbers as text), then a summary header
and row. Amounts are yuan with two decimals and become fen through the one money parser
(`core.money.parse_yuan`, Decimal, never float). Columns are found by name, not position,
so the ALL, SUCCESS and REFUND layouts all read. Times are China Standard Time.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
from datetime import datetime, timedelta, timezone

from openprepay.core.contracts import TradeRecord
from openprepay.core.errors import RequestError
from openprepay.core.money import parse_yuan

from .errors import BillError

CHINA = timezone(timedelta(hours=8), "CST")
#: The largest amount one bill cell may hold (10^10 yuan): far above any order, only a
#: guard against a garbled cell becoming a huge number.
MAX_CELL_FEN = 10**12

TIME = "交易时间"
TRANSACTION_ID = "微信订单号"
OUT_TRADE_NO = "商户订单号"
STATE = "交易状态"
#: The order's total (amount.total); older layouts only have 应结订单金额.
ORDER_AMOUNT = ("订单金额", "应结订单金额")
REFUND_AMOUNT = "退款金额"
#: 交易状态 → our states (REFUND rows are refunds, written when the refund was initiated).
STATES = {"SUCCESS": "PAID", "REFUND": "REFUNDED", "REVOKED": "CLOSED", "NOTPAY": "NOTPAY"}


def check_sha1(content: bytes, hash_type: str, hash_value: str) -> None:
    if hash_type.upper() != "SHA1":
        raise BillError("hash_type", f"expected SHA1, got {hash_type!r}")
    actual = hashlib.sha1(content).hexdigest()
    if not hmac.compare_digest(actual, hash_value.lower()):
        raise BillError("hash_value", f"SHA-1 of the file is {actual}, the API said {hash_value}")


def parse_trade_bill(content: bytes) -> list[TradeRecord]:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BillError("file", f"not UTF-8 at byte {exc.start}") from None
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip().lstrip("\ufeff") for cell in rows[0]]
    column = {name: i for i, name in enumerate(header)}
    for needed in (TIME, TRANSACTION_ID, OUT_TRADE_NO, STATE):
        if needed not in column:
            raise BillError("header", f"no column {needed}; got {', '.join(header[:30])}")
    amount_column = next((column[n] for n in ORDER_AMOUNT if n in column), None)
    if amount_column is None:
        raise BillError("header", f"no column {' or '.join(ORDER_AMOUNT)}")
    records = []
    for number, row in enumerate(rows[1:], start=2):
        if not row[0].startswith("`"):
            break  # the summary header: the detail rows are over
        cells = [cell.strip().removeprefix("`") for cell in row]
        # A shifted row (a comma inside a cell) would read amounts from the wrong column.
        if len(cells) != len(header):
            raise BillError(f"row {number}", f"{len(cells)} columns, the header has {len(header)}")

        state = STATES.get(cells[column[STATE]])
        if state is None:
            raise BillError(f"row {number} {STATE}", f"unknown state {cells[column[STATE]]!r}")
        refund_fen = 0
        if REFUND_AMOUNT in column and cells[column[REFUND_AMOUNT]]:
            refund_fen = _fen(cells[column[REFUND_AMOUNT]], f"row {number} {REFUND_AMOUNT}")
        records.append(
            TradeRecord(
                out_trade_no=cells[column[OUT_TRADE_NO]],
                transaction_id=cells[column[TRANSACTION_ID]],
                state=state,
                amount_fen=_fen(cells[amount_column], f"row {number} {header[amount_column]}"),
                refund_fen=refund_fen,
                at=_time(cells[column[TIME]], f"row {number} {TIME}"),
            )
        )
    return records


def _fen(value: str, where: str) -> int:
    try:
        return parse_yuan(value, where, low_fen=0, high_fen=MAX_CELL_FEN)
    except RequestError as exc:
        raise BillError(where, exc.message) from None


def _time(value: str, where: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA)
    except ValueError:
        raise BillError(where, f"expected YYYY-MM-DD HH:MM:SS, got {value!r}") from None
