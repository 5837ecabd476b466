"""Tariff bindings: which tariff prices a meter, and whether it can price its registers.

A meter is priced by its account's tariff when that tariff prices the meter's commodity,
otherwise by `[prepay.engine] default_tariffs` of its kind (the rule metering bills by).
A time-of-use tariff bills the meter's own rate registers T1..Tn, each at the rate the
tariff's `registers = [...]` map (or `[prepay.register_rates]` for the model, or the
default 尖/峰/平/谷 = sharp/peak/flat/valley) names; a tariff without a rate a register is
mapped to cannot bill that meter, and the service would bill nothing for it.

Such a binding is refused where it is made — `openprepay check` (the default tariffs
against the site's room meters), `account open`, CSV import, OPC UA SetTariff and batch
tariff changes (both through `Operations.set_tariff`) — with the register and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from ..config.site import Site
from ..errors import FieldError
from ..ledger import RequestError
from ..model import DeviceModel, MeterKind
from ..rating.compiled import DEFAULT_REGISTER_RATES
from ..rating.engine import CompiledTariff, RatingError, RegisterLayout
from ..rating.tariff_reading import load_tariffs
from ..rating.tariffs import Commodity, Tariff, TariffCatalogue
from .engine_settings import load_engine
from .settings import PrepaySettings, load_prepay


def tariff_for(
    catalogue: TariffCatalogue, defaults: Mapping[str, str], kind: str, tariff_id: str | None
) -> str | None:
    """The tariff that prices a meter of `kind` (electric, water): the account's when it
    prices that commodity, else the site's default for the kind (`[prepay.engine]
    default_tariffs`); None when nothing prices it. Metering, bills and reports use it."""
    commodity = Commodity.WATER if kind == MeterKind.WATER.value else Commodity.ELECTRICITY
    if tariff_id and tariff_id in catalogue and catalogue.get(tariff_id).commodity is commodity:
        return tariff_id
    default = defaults.get(kind)
    return default if default and default in catalogue else None


class TariffBinding:
    """Answers for one site which tariff prices a meter and whether it fits."""

    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        catalogue: TariffCatalogue,
        settings: PrepaySettings,
        default_tariffs: Mapping[str, str],
    ) -> None:
        self.site = site
        self.models = models
        self.catalogue = catalogue
        self.settings = settings
        self.default_tariffs = dict(default_tariffs)
        self._fits: dict[tuple[str, str], str | None] = {}

    @classmethod
    def for_site(cls, site: Site, models: Mapping[str, DeviceModel]) -> TariffBinding:
        """The binding rules of a checked site file (the CLI outside a running service)."""
        catalogue = load_tariffs(site)
        defaults = load_engine(site, catalogue).default_tariffs
        return cls(site, models, catalogue, load_prepay(site), defaults)

    def kind_of(self, meter_id: str) -> MeterKind | None:
        device = self.site.devices.get(meter_id)
        model = self.models.get(device.model) if device is not None else None
        if model is None or model.kind not in (MeterKind.ELECTRIC, MeterKind.WATER):
            return None
        return model.kind

    def effective(self, meter_id: str, tariff_id: str | None) -> str | None:
        """The tariff that prices `meter_id` for an account with `tariff_id` (None: none)."""
        kind = self.kind_of(meter_id)
        if kind is None:
            return None
        return tariff_for(self.catalogue, self.default_tariffs, kind.value, tariff_id)

    def problem(self, tariff_id: str, meter_id: str) -> str | None:
        """Why `tariff_id` cannot bill `meter_id`'s registers, with the fix; None if it can."""
        model_name = self.site.devices[meter_id].model
        key = (tariff_id, model_name)
        if key not in self._fits:
            self._fits[key] = self._fit(self.catalogue.get(tariff_id), self.models[model_name])
        return self._fits[key]

    def _fit(self, tariff: Tariff, model: DeviceModel) -> str | None:
        try:
            CompiledTariff(
                tariff,
                RegisterLayout.from_model(model),
                self.site.info.tz,
                self.settings.rates_for(model.name),
            )
        except RatingError as exc:
            return f"{exc}{_example(tariff, model)}"
        return None

    def check_known(self, tariff_id: str | None, field: str = "tariff") -> None:
        """Refuse a tariff id the site's [tariffs] does not define."""
        if tariff_id is not None and tariff_id not in self.catalogue:
            known = ", ".join(sorted(t.id for t in self.catalogue)) or "none defined"
            raise RequestError(field, f"unknown tariff {tariff_id!r} (site tariffs: {known})")

    def check_account(
        self, tariff_id: str | None, meter_ids: Iterable[str], field: str = "tariff"
    ) -> None:
        """Refuse binding `tariff_id` (or the defaults it leaves in place) to meters whose
        registers it cannot bill: the first such meter is named, with the fix."""
        self.check_known(tariff_id, field)
        for meter_id in meter_ids:
            priced_by = self.effective(meter_id, tariff_id)
            if priced_by is None:
                continue
            problem = self.problem(priced_by, meter_id)
            if problem is not None:
                raise RequestError(field, f"meter {meter_id} cannot be billed: {problem}")

    def site_problems(self) -> list[FieldError]:
        """The default tariffs against every room meter of their commodity (`check`)."""
        out = []
        for device in self.site.devices.values():
            kind = self.kind_of(device.id)
            if kind is None or device.room is None:
                continue
            tariff_id = self.default_tariffs.get(kind.value)
            if tariff_id is None or tariff_id not in self.catalogue:
                continue
            problem = self.problem(tariff_id, device.id)
            if problem is not None:
                out.append(
                    FieldError(
                        f"prepay.engine.default_tariffs.{kind.value}",
                        f"tariff {tariff_id!r} cannot bill meter {device.id} "
                        f"({device.model}): {problem}",
                    )
                )
        return out


def _example(tariff: Tariff, model: DeviceModel) -> str:
    """A register map that would fit, as the fix to quote (only for time-of-use tariffs)."""
    rates = list(tariff.versions[-1].rates)
    n = len(model.tariff_points)
    if not rates or not n or not tariff.versions[-1].time_of_use:
        return ""
    mapped = []
    for name in DEFAULT_REGISTER_RATES[:n]:
        if name in rates:
            mapped.append(name)
        elif name == "sharp" and "peak" in rates:
            mapped.append("peak")  # 尖 billed at 峰, the usual three-rate convention
        else:
            mapped.append(rates[0])
    return (
        f"; for example `registers = {json.dumps(mapped)}` in [tariffs.{tariff.id}] bills "
        f"T1..T{n} at those rates"
    )
