"""The words of the notice a tenant gets when the account's alarm level changes."""

from __future__ import annotations

from ..ledger import format_fen
from .feecontrol import FeeDecision, FeeState


def notice_subject(account_id: str, decision: FeeDecision, balance_fen: int) -> str:
    """The subject line: what happened to the balance, and the new level."""
    level = decision.state.value
    if decision.state.severity > decision.previous.severity:
        what = {
            FeeState.ALARM1: "low balance",
            FeeState.ALARM2: "balance very low — supply will be cut",
            FeeState.OVER_ZERO: "balance used up — supply will be cut",
            FeeState.OVERDRAFT: "balance exhausted — supply is being cut",
        }.get(decision.state, level)
    else:
        what = "balance restored"
    return f"Account {account_id}: {what} ({format_fen(balance_fen)} CNY, {level})"


def notice_body(
    account_id: str,
    decision: FeeDecision,
    balance_fen: int,
    notice_served: bool,
    notice_days: int,
) -> str:
    """The text: balance, level change, the disconnection notice when served, thanks when
    the account got better."""
    lines = [
        f"Account {account_id}: energy balance {format_fen(balance_fen)} CNY.",
        f"Alarm level {decision.previous.value} -> {decision.state.value}.",
    ]
    if notice_served:
        lines.append(
            "This is your notice of disconnection: unless you top up, supply may be cut"
            + (f" after {notice_days} day(s)." if notice_days else ".")
        )
    if decision.state.severity < decision.previous.severity:
        lines.append("Thank you: supply is available again.")
    return "\n".join(lines)
