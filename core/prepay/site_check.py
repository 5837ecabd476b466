"""The check of a site file's prepayment sections, before anything starts."""

from __future__ import annotations

from collections.abc import Mapping

from ..config.site import Site
from ..errors import FieldError
from ..model import DeviceModel
from ..rating.tariff_reading import check_tariffs, load_tariffs
from .binding import TariffBinding
from .engine_settings import parse_engine
from .notifications import check_notify
from .settings import check_prepay, load_prepay


def check_prepayment_sections(
    site: Site, models: Mapping[str, DeviceModel] | None = None
) -> list[FieldError]:
    """Every problem of `[tariffs]`, `[prepay]` (rating, policy, engine) and `[notify]`:
    what `openprepay check` and the runtime report before anything starts. With the
    `models`, also every room meter its default tariff cannot bill (a register the tariff
    has no rate for: the fix is a `registers` map)."""
    errors = list(check_tariffs(site))
    errors.extend(check_prepay(site))
    errors.extend(check_notify(site))
    catalogue = None
    if not any(e.path.startswith("tariffs") for e in errors):
        catalogue = load_tariffs(site)
    engine = parse_engine(site, errors, catalogue)
    if models is not None and catalogue is not None and not errors:
        binding = TariffBinding(site, models, catalogue, load_prepay(site), engine.default_tariffs)
        errors.extend(binding.site_problems())
    return errors
