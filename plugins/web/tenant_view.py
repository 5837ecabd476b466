"""What the tenant page shows, read through the door for the room the request is bound to,
and the small decisions the page makes (how to pay here, how far an order has come, what
amount was asked for)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from openprepay.core.errors import RequestError
from openprepay.core.money import parse_yuan
from openprepay.core.operations import RoomView
from openprepay.core.payments.states import OrderState

#: A WeChat in-app browser says so in its user agent.
WECHAT_AGENT = "MicroMessenger"


@dataclass(frozen=True, slots=True)
class PayOption:
    """One pay button: the provider's channel and how the payer pays there."""

    channel: str
    method: str


def in_wechat(user_agent: str) -> bool:
    return WECHAT_AGENT in (user_agent or "")


def pay_options(
    providers: Mapping[str, object], *, inside_wechat: bool, openid: str | None
) -> list[PayOption]:
    """Inside WeChat with an openid: JSAPI; elsewhere a WeChat Native QR; Alipay's QR."""
    options = []
    if "wechat" in providers:
        jsapi = inside_wechat and openid is not None
        options.append(PayOption("wechat", "jsapi" if jsapi else "native"))
    if "alipay" in providers:
        options.append(PayOption("alipay", "qr"))
    return options


def read_amount(preset: str | None, other: str | None) -> int:
    """The amount asked for, fen: the free amount when given, else the preset (yuan)."""
    text = (other or "").strip() or (preset or "").strip()
    if not text:
        raise RequestError("amount", "no amount")
    return parse_yuan(text, "amount", low_fen=1)


def progress(order_state: OrderState, view: RoomView | None) -> tuple[str, ...]:
    """The steps an order has reached, for the page: waiting; paid; credited; restoring
    or restored (every meter of the room read back with its supply on); or closed,
    conflict, refunded."""
    if order_state is OrderState.CREATED:
        return ("waiting",)
    if order_state is OrderState.PAID:
        return ("paid",)
    if order_state is OrderState.CREDITED:
        meters = view.snapshot.meters if view is not None else ()
        on = bool(meters) and all(m.supply_on is True for m in meters)
        return ("paid", "credited", "restored" if on else "restoring")
    return (order_state.value.lower(),)


def supply_word(view: RoomView) -> str:
    states = [m.supply_on for m in view.snapshot.meters]
    if any(s is False for s in states):
        return "supply_off"
    if states and all(s is True for s in states):
        return "supply_on"
    return "supply_unknown"
