"""Online payment orders (issue 11): the orders we open at a provider (WeChat Pay, Alipay...)
and what the provider told us about them, credited through the door exactly once.

- `states`: the order's states and the one function that decides a transition from the
  current state and a provider's notice (`decide`), terminal states never going back;
- `orders`: the `payment_order` rows (our `out_trade_no`, insert, lock, update, list);
- `settings`: the site's `[payments]` section (minimum, expiry, active-query delay);
- `service`: the running service's loop (credit what is PAID but not CREDITED at start,
  query orders no notice came for, close expired orders).

The door's methods (`core.operations.payments`) are the only writers; the web plugin
(`plugins/web`) receives the providers' callbacks and hands their notices to the door.
"""

from __future__ import annotations

from .orders import PaymentOrder, get_order, list_orders, new_out_trade_no
from .settings import PaymentSettings, check_payments, load_payments
from .states import Decision, OrderState, decide

__all__ = [
    "Decision",
    "OrderState",
    "PaymentOrder",
    "PaymentSettings",
    "check_payments",
    "decide",
    "get_order",
    "list_orders",
    "load_payments",
    "new_out_trade_no",
]
