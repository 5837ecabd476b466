"""Yuan strings at the Alipay boundary ⇄ integer fen, exactly (no float on the way).

Alipay's amounts are yuan with at most two decimals in [0.01, 100000000]; the core's are
fen. Parsing goes through the one money parser (`core.money`), with Alipay's own bounds
instead of the meter capacity, so "99999999.99" is 9,999,999,999 fen, not an error."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from openprepay.core.errors import RequestError
from openprepay.core.money import format_fen, parse_yuan

#: Alipay's largest single amount: 100,000,000.00 yuan.
MAX_FEN = 10_000_000_000
#: Alipay's clock, its timestamps and its bill dates.
BEIJING = ZoneInfo("Asia/Shanghai")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def to_yuan(amount_fen: int, field: str = "amount_fen") -> str:
    """1230 → "12.30". Whole fen in (0, MAX_FEN] only."""
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int):
        raise RequestError(field, f"expected an integer number of fen, got {amount_fen!r}")
    if not 1 <= amount_fen <= MAX_FEN:
        raise RequestError(field, f"Alipay takes 0.01..100000000.00 yuan, got {amount_fen} fen")
    return format_fen(amount_fen)


def to_fen(yuan: str, field: str, *, low_fen: int = 0) -> int:
    """ "12.30" → 1230; a `RequestError` naming `field` for anything that is not whole fen."""
    if not isinstance(yuan, str):
        raise RequestError(field, f'expected a yuan amount such as "12.30", got {yuan!r}')
    return parse_yuan(yuan.strip(), field, low_fen=low_fen, high_fen=MAX_FEN)


def beijing_time(text: str, field: str) -> datetime:
    """ "2026-12-02 10:00:00" (Beijing time, as Alipay writes times) → an aware datetime."""
    try:
        return datetime.strptime(text.strip(), TIME_FORMAT).replace(tzinfo=BEIJING)
    except (ValueError, AttributeError):
        raise RequestError(field, f'expected "YYYY-MM-DD HH:MM:SS", got {text!r}') from None


def beijing_text(at: datetime) -> str:
    """An aware datetime as Alipay's timestamp text, in Beijing time."""
    return at.astimezone(BEIJING).strftime(TIME_FORMAT)
