"""Methods on accounts and meters: arguments checked, then the core service functions.

Every method calls `runtime.operations` (core.operations.Operations), the same functions
the command line uses, in a worker thread (they block on the database). The session's user
is the actor (`opcua:<name>`).

Before anything is called the arguments are checked; a bad call changes nothing and gets:

- BadArgumentsMissing / BadTooManyArguments: wrong number of arguments;
- BadInvalidArgument: wrong type (that argument's result is BadTypeMismatch), not a
  number, more than two decimals, an empty reason, an unknown tariff, a reference used for
  another request — anything the core refuses as a bad request;
- BadOutOfRange: an amount that is NaN or infinite, at or below zero, above the meter
  capacity (1e30 too), or beyond what can be refunded or held;
- BadInvalidState: the account cannot do it now (closed account);
- BadUserAccessDenied: the session's role may not call the method — checked before the
  request is processed at all (access.py), and again by every method callback
  (`check_role`), whatever the channel.

Amounts are read by the ledger's one money parser (`parse_yuan`, `check_amount` in
core/money.py): a Double becomes the shortest decimal that reads back as it.

The message says what was wrong: it is in the result's InputArgumentDiagnosticInfos
(AdditionalInfo) for the offending argument, and in the audit event every call raises.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from asyncua import ua

from openprepay.core.errors import OpenPrepayError
from openprepay.core.ledger import RequestError, parse_yuan
from openprepay.core.money import AmountOutOfRange, check_amount

from .access import SessionUser, actor_name, may_call
from .users import Role

log = logging.getLogger("openprepay.opcua")

V = ua.VariantType
S = ua.StatusCodes

CASH = frozenset({Role.CASHIER, Role.ADMIN})
SUPPLY = frozenset({Role.OPERATOR, Role.ADMIN})
ADMIN = frozenset({Role.ADMIN})

_NUMERIC = frozenset(
    {V.Double, V.Float, V.SByte, V.Byte, V.Int16, V.UInt16, V.Int32, V.UInt32, V.Int64, V.UInt64}
)
#: Request fields whose refusal means "out of range" rather than "invalid".
_RANGE_FIELDS = frozenset(
    {"amount", "alarm1", "alarm2", "overdraft_limit", "close_limit", "hoard_limit"}
)


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    vtype: ua.VariantType
    description: str
    #: The core's name for it (`RequestError.field`): its refusals point at this argument.
    field: str = ""

    def argument(self) -> ua.Argument:
        return ua.Argument(
            Name=self.name,
            DataType=ua.NodeId(int(self.vtype)),
            ValueRank=-1,
            ArrayDimensions=[],
            Description=ua.LocalizedText(self.description),
        )


class Refused(Exception):
    """A call refused before or by the core: status, message, offending argument."""

    def __init__(
        self, status: int, message: str, arg: int | None = None, arg_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.arg = arg
        #: The offending argument's own result (BadTypeMismatch for a wrong type).
        self.arg_status = status if arg_status is None else arg_status


@dataclass(slots=True)
class Call:
    """What a method callback knows about the call it is serving."""

    method: str
    method_id: ua.NodeId
    target_kind: str
    target: str
    user: SessionUser | None
    inputs: tuple[ua.Variant, ...]
    #: Set when the core published its AuditRecord for this call.
    audited: bool = False

    @property
    def actor(self) -> str:
        return actor_name(self.user)


Handler = Callable[[Call, list[Any]], Awaitable[list[ua.Variant]]]


@dataclass(frozen=True, slots=True)
class MethodSpec:
    owner: str  # the type that declares it: AccountType or MeterType
    name: str
    inputs: tuple[Arg, ...]
    outputs: tuple[Arg, ...]
    roles: frozenset[Role]
    description: str
    handler: Handler = field(compare=False)


#: The call being served, visible to bus listeners that run inside it (the core publishes
#: its AuditRecord from the worker thread that runs the operation; to_thread copies this).
CURRENT_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "openprepay_opcua_call", default=None
)


# -- argument conversion -----------------------------------------------------------------


def amount_fen(
    value: Any, vtype: ua.VariantType, index: int, *, field: str = "amount", positive: bool = True
) -> int:
    """A yuan amount (a Double or an integer type) as integer fen, read by the ledger's
    money parser; with `positive`, checked as a top-up or refund amount (more than 0, at
    most the meter capacity). Otherwise the core checks the field's own bounds."""
    if vtype not in _NUMERIC or isinstance(value, bool):
        raise Refused(S.BadInvalidArgument, f"expected a number of yuan, got {vtype.name}", index)
    if isinstance(value, float) and not math.isfinite(value):
        raise Refused(S.BadOutOfRange, f"expected a finite number of yuan, got {value}", index)
    try:
        fen = parse_yuan(value, field)
        return check_amount(fen, field) if positive else fen
    except AmountOutOfRange as exc:  # 1e30, inf, negative, above capacity
        raise Refused(S.BadOutOfRange, exc.message, index) from None
    except RequestError as exc:  # more than two decimals
        raise Refused(S.BadInvalidArgument, exc.message, index) from None


def optional_amount_fen(value: Any, vtype: ua.VariantType, index: int, field: str) -> int | None:
    """NaN means "keep the current value"."""
    if vtype in (V.Double, V.Float) and isinstance(value, float) and math.isnan(value):
        return None
    return amount_fen(value, vtype, index, field=field, positive=False)


def role_refusal(spec: MethodSpec, user: SessionUser | None) -> str:
    """Why `user` may not call `spec`, for the caller and the audit."""
    if user is None:
        who = "a call outside a session"
    elif user.anonymous:
        who = "an anonymous session"
    else:
        who = f"role {user.access.value}"
    needs = " or ".join(sorted(r.value for r in spec.roles))
    return f"{who} may not call {spec.name} (needs {needs})"


def check_role(spec: MethodSpec, user: SessionUser | None) -> None:
    """BadUserAccessDenied unless the session's role may call `spec`. Every method
    callback runs it first: the role is enforced even where asyncua skips its ruleset."""
    if not may_call(user, spec.roles):
        raise Refused(S.BadUserAccessDenied, role_refusal(spec, user))


def check_inputs(spec: MethodSpec, inputs: Sequence[Any]) -> list[Any]:
    """Python values of the inputs, or `Refused` for a wrong count or type."""
    if len(inputs) < len(spec.inputs):
        missing = ", ".join(a.name for a in spec.inputs[len(inputs) :])
        raise Refused(S.BadArgumentsMissing, f"{spec.name} needs {missing}")
    if len(inputs) > len(spec.inputs):
        raise Refused(
            S.BadTooManyArguments,
            f"{spec.name} takes {len(spec.inputs)} arguments, got {len(inputs)}",
        )
    values = []
    for i, (arg, variant) in enumerate(zip(spec.inputs, inputs, strict=True)):
        vtype = variant.VariantType if isinstance(variant, ua.Variant) else None
        value = variant.Value if isinstance(variant, ua.Variant) else variant
        if getattr(variant, "is_array", False) or isinstance(value, list):
            raise Refused(
                S.BadInvalidArgument,
                f"{arg.name}: expected one value, got an array",
                i,
                S.BadTypeMismatch,
            )
        if arg.vtype is V.Double:
            if vtype not in _NUMERIC or isinstance(value, bool):
                raise Refused(
                    S.BadInvalidArgument,
                    f"{arg.name}: expected a number, got {vtype.name if vtype else type(value)}",
                    i,
                    S.BadTypeMismatch,
                )
        elif vtype is not arg.vtype:
            raise Refused(
                S.BadInvalidArgument,
                f"{arg.name}: expected {arg.vtype.name}, "
                f"got {vtype.name if vtype else type(value).__name__}",
                i,
                S.BadTypeMismatch,
            )
        values.append((value, vtype))
    return values


def refusal_of(exc: Exception, spec: MethodSpec | None = None) -> Refused:
    if isinstance(exc, Refused):
        return exc
    if isinstance(exc, RequestError):
        inputs = spec.inputs if spec is not None else ()
        # "final_reading.T1" points at the argument "final_reading".
        head = exc.field.split(".", 1)[0]
        arg = next((i for i, a in enumerate(inputs) if a.field and a.field == head), None)
        if isinstance(exc, AmountOutOfRange) or exc.field in _RANGE_FIELDS:
            return Refused(S.BadOutOfRange, str(exc), arg)
        if exc.field == "account":
            return Refused(S.BadInvalidState, str(exc))
        return Refused(S.BadInvalidArgument, str(exc), arg)
    if isinstance(exc, OpenPrepayError):
        return Refused(S.BadInvalidState, str(exc))
    log.exception("OPC UA method failed", exc_info=exc)
    return Refused(S.BadInternalError, f"internal error: {type(exc).__name__}")


def result_of(refused: Refused, n_inputs: int) -> ua.CallMethodResult:
    """A refused call's result: the status, and the message on the offending argument."""
    result = ua.CallMethodResult()
    result.StatusCode = ua.StatusCode(refused.status)
    if n_inputs:
        result.InputArgumentResults = [
            ua.StatusCode(refused.arg_status if i == refused.arg else S.Good)
            for i in range(n_inputs)
        ]
        shown = refused.arg if refused.arg is not None else 0
        result.InputArgumentDiagnosticInfos = [
            ua.DiagnosticInfo(AdditionalInfo=refused.message) if i == shown else ua.DiagnosticInfo()
            for i in range(n_inputs)
        ]
    return result


async def in_thread(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking core call off the loop, keeping the context (CURRENT_CALL)."""
    return await asyncio.to_thread(fn, *args, **kwargs)
