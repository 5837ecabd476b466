"""The site file's `[prepay]` section: rounding, account threshold defaults, the rating
options, the T-register → rate mapping per model, and the disconnect policy.

```toml
[prepay]
rounding = "half_up"              # half_up | half_even | down | up

[prepay.thresholds]               # defaults for new accounts, CNY
alarm1 = "20.00"
alarm2 = "5.00"
overdraft_limit = "0.00"
close_limit = "0.00"
hoard_limit = "5000.00"

[prepay.rating]
max_per_hour = "30"               # kWh/h (m³/h): more since the baseline is a SPIKE, not
                                  # billed (default: each meter's plausibility limit)
gap_s = 3600                      # readings further apart are flagged GAP (still billed)

[prepay.register_rates]           # T1..T4 of a model → rate names (default sharp/peak/flat/valley)
"acrel.DDSY1352" = ["sharp", "peak", "flat", "valley"]

[prepay.policy]                   # see core/prepay/policy.py
quiet_start = "18:00"
quiet_end = "08:00"
```

Other keys of `[prepay]` belong to other parts of the service and are left to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..config.reader import ID_PATTERN, TableReader
from ..errors import ConfigError, FieldError
from ..rating.checks import RatingOptions
from ..rating.rounding import Rounding
from ..rating.tariff_values import to_decimal
from .feecontrol import FeeThresholds, read_thresholds
from .policy import PolicyConfig
from .policy_config import read_policy

#: The keys of [prepay] this module reads.
KEYS = ("rounding", "thresholds", "rating", "register_rates", "policy")


@dataclass(frozen=True, slots=True)
class PrepaySettings:
    rounding: Rounding = Rounding.HALF_UP
    thresholds: FeeThresholds = field(default_factory=FeeThresholds)
    rating: RatingOptions = field(default_factory=RatingOptions)
    register_rates: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def rates_for(self, model: str) -> tuple[str, ...] | None:
        return self.register_rates.get(model)


def parse_prepay(data: Any, errors: list[FieldError]) -> PrepaySettings:
    r = TableReader(data if data is not None else {}, "prepay", errors)
    rounding = r.str("rounding", Rounding.HALF_UP.value, choices=[m.value for m in Rounding])
    thresholds = read_thresholds(r.table("thresholds"))
    rating = _read_rating(r.table("rating"))
    rates_r = r.table("register_rates")
    register_rates: dict[str, tuple[str, ...]] = {}
    for model in rates_r.data:
        names = rates_r.str_list(model)
        if names is None:
            continue
        bad = [n for n in names if not ID_PATTERN.match(n)]
        if bad or not 1 <= len(names) <= 8:
            rates_r.error("expected 1 to 8 rate names for T1..Tn", model)
            continue
        register_rates[model] = tuple(names)
    policy = read_policy(r.table("policy"))
    return PrepaySettings(
        Rounding(rounding) if rounding else Rounding.HALF_UP,
        thresholds,
        rating,
        register_rates,
        policy,
    )


def _read_rating(r: TableReader) -> RatingOptions:
    d = RatingOptions()
    present, raw = r._get("max_per_hour", None)
    max_per_hour = None
    if present:
        value = to_decimal(raw)
        if value is None or value <= 0 or value * 1000 != (value * 1000).to_integral_value():
            r.error(
                f'expected a positive quantity per hour, e.g. "30", got {raw!r}', "max_per_hour"
            )
        else:
            max_per_hour = Decimal(value)
    gap = r.int("gap_s", d.gap_s, low=1)
    r.finish()
    return RatingOptions(max_per_hour=max_per_hour, gap_s=gap if gap is not None else d.gap_s)


def load_prepay(site: Any) -> PrepaySettings:
    """The `[prepay]` settings of a loaded `Site`; `ConfigError` naming every bad field."""
    errors: list[FieldError] = []
    settings = parse_prepay(site.sections.get("prepay", {}), errors)
    if errors:
        raise ConfigError(str(site.path or "site"), errors)
    return settings


def check_prepay(site: Any) -> list[FieldError]:
    errors: list[FieldError] = []
    parse_prepay(site.sections.get("prepay", {}), errors)
    return errors
