"""Alipay's trade bill (账单): a zip of GBK-encoded CSV files, read into `TradeRecord`s.

`alipay.data.dataservice.bill.downloadurl.query` (bill_type "trade") gives a short-lived
URL of a zip holding `<PID>_<date>_业务明细.csv` (one row per payment or refund) and
`…_业务明细(汇总).csv` (totals). The detail file opens with `#` comment lines, then the
header row (支付宝交易号, 商户订单号, 业务类型, …, 订单金额（元）, …, 退款批次号/请求号, …),
the rows (values often padded with tabs), and `#` summary lines. Amounts are yuan.

Names inside the zip are GBK too, without the zip's UTF-8 flag, so Python reads them as
cp437; they are decoded again here. Columns are found by their header, not position.
"""

from __future__ import annotations

import csv
import io
import zipfile
from datetime import datetime

from openprepay.core.contracts import TradeRecord
from openprepay.core.errors import RequestError

from .amounts import beijing_time, to_fen

DETAIL = "业务明细"
SUMMARY = "汇总"
TRADE_NO = "支付宝交易号"
OUT_TRADE_NO = "商户订单号"
KIND = "业务类型"
FINISHED = "完成时间"
AMOUNT = "订单金额（元）"
REFUND_NO = "退款批次号/请求号"


class BillUnreadable(RequestError):
    """The downloaded bill is not what Alipay sends (field: the bill's part at fault)."""


def zip_name(info: zipfile.ZipInfo) -> str:
    """The member's name as written: GBK bytes that zipfile decoded as cp437."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("gbk")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def detail_text(data: bytes) -> str:
    """The detail CSV's text from the downloaded bytes (a zip, or the CSV itself)."""
    raw = data
    if data[:4] == b"PK\x03\x04":
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise BillUnreadable("bill", f"a broken zip: {exc}") from None
        members = [i for i in archive.infolist() if not i.is_dir()]
        detail = [i for i in members if DETAIL in zip_name(i) and SUMMARY not in zip_name(i)]
        if len(detail) != 1:
            names = ", ".join(zip_name(i) for i in members)
            raise BillUnreadable("bill", f"expected one {DETAIL}.csv in the zip, found: {names}")
        raw = archive.read(detail[0])
    for encoding in ("gbk", "utf-8-sig"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise BillUnreadable("bill", "the CSV is neither GBK nor UTF-8")


def parse_bill(data: bytes) -> list[TradeRecord]:
    rows = csv.reader(io.StringIO(detail_text(data)))
    header: dict[str, int] | None = None
    records: list[TradeRecord] = []
    for number, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if header is None:
            if cells[0] == TRADE_NO:
                header = {name: at for at, name in enumerate(cells)}
                missing = [n for n in (OUT_TRADE_NO, KIND, AMOUNT) if n not in header]
                if missing:
                    raise BillUnreadable("bill", f"header without {', '.join(missing)}")
            continue
        records.append(_record(header, cells, number))
    if header is None:
        raise BillUnreadable("bill", f"no header row starting with {TRADE_NO}")
    return records


def _record(header: dict[str, int], cells: list[str], number: int) -> TradeRecord:
    def cell(name: str) -> str:
        at = header.get(name)
        return cells[at] if at is not None and at < len(cells) else ""

    where = f"bill line {number}"
    amount = cell(AMOUNT)
    negative = amount.startswith("-")
    fen = to_fen(amount.lstrip("-"), f"{where} {AMOUNT}")
    finished = cell(FINISHED) or None
    at: datetime | None = beijing_time(finished, f"{where} {FINISHED}") if finished else None
    if cell(KIND) == "退款" or negative:
        # A refund row carries the refunded amount (negative), not the order's total.
        return TradeRecord(cell(OUT_TRADE_NO), cell(TRADE_NO), "REFUNDED", 0, fen, at)
    return TradeRecord(cell(OUT_TRADE_NO), cell(TRADE_NO), "PAID", fen, 0, at)
