"""Checking a batch job's parameters before anything is stored: amounts in fen, meter
prices and device parameters in the one number form; errors name the field."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ...config.reader import NUMBER_LIMIT
from ...ledger import RequestError, parse_yuan
from ...numbers import NumberRefused, read_decimal
from ...prepay.binding import TariffBinding
from ...rating.tariffs import MAX_PRICE
from .model import CONTROL_ACTIONS, Action


def check_params(
    binding: TariffBinding, action: Action, params: Mapping[str, Any]
) -> dict[str, Any]:
    """Validated parameters of `action` (amounts in fen); errors name the field. `binding`
    knows the site's tariffs."""
    p = dict(params)
    out: dict[str, Any] = {}
    if action is Action.SET_TARIFF:
        tariff = p.pop("tariff", None)
        binding.check_known(tariff)
        out["tariff"] = tariff
    elif action is Action.SET_THRESHOLDS:
        for name in ("alarm1", "alarm2"):
            value = p.pop(name, None)
            out[name] = None if value is None else fen(value, name)
    elif action is Action.TOPUP:
        value = p.pop("amount", None)
        out["amount_fen"] = None if value is None else fen(value, "amount", positive=True)
        out["channel"] = p.pop("channel", "cash")
    elif action in CONTROL_ACTIONS:
        out["override"] = bool(p.pop("override", False))
        kind = p.pop("kind", None)
        if kind not in (None, "electric", "water"):
            raise RequestError("kind", f"expected electric or water, got {kind!r}")
        out["kind"] = kind
    elif action is Action.SET_PRICE:
        prices = {}
        for rate in ("sharp", "peak", "flat", "valley"):
            value = p.pop(rate, None)
            if value is None:
                raise RequestError(rate, "required: the meter holds all four prices")
            prices[rate] = _price(value, rate)
        out["command"] = "SET_PRICES"
        out["values"] = prices
    elif action is Action.SET_PARAMS:
        command = p.pop("command", None)
        if not isinstance(command, str) or not command:
            raise RequestError("command", "required: the model's command, e.g. SET_ALARMS")
        values = p.pop("values", {})
        if not isinstance(values, Mapping) or not values:
            raise RequestError("param", "give the command's parameters (--param NAME=VALUE)")
        out["command"] = command
        out["values"] = {str(k): _number(v, f"param {k}") for k, v in values.items()}
    if p:
        raise RequestError(next(iter(p)), f"not a parameter of {action.value}")
    return out


def parse_action(action: str) -> Action:
    """The `Action` named `action` (an error lists the actions)."""
    try:
        return Action(action)
    except ValueError:
        raise RequestError(
            "action", f"expected one of {', '.join(a.value for a in Action)}; got {action!r}"
        ) from None


def fen(value: Any, field: str, positive: bool = False) -> int:
    """An amount in yuan as fen (at least 0.01 when `positive`)."""
    return parse_yuan(value, field, low_fen=1 if positive else 0)


def _price(value: Any, field: str) -> float:
    """A meter price: the one number form, 0 to 1000 CNY, at most 4 decimals."""
    try:
        d = read_decimal(value, places=4, low=Decimal(0), high=MAX_PRICE, example="0.6170")
    except NumberRefused as refused:
        raise RequestError(field, refused.message) from None
    return float(d)  # a device parameter: the meter stores it in 0.0001 CNY (rounded)


def _number(value: Any, field: str) -> float | int:
    """A device parameter: the one number form, within ±10^12; whole numbers stay int."""
    try:
        d = read_decimal(value, places=None, low=Decimal(-NUMBER_LIMIT), high=Decimal(NUMBER_LIMIT))
    except NumberRefused as refused:
        raise RequestError(field, refused.message) from None
    return int(d) if d == d.to_integral_value() and "." not in str(value) else float(d)
