"""The configuration samples of docs/prepay-rating.md parse without errors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from openprepay.core.errors import FieldError
from openprepay.core.prepay.settings import parse_prepay
from openprepay.core.rating.tariff_reading import parse_tariffs

DOC = Path(__file__).resolve().parents[3] / "docs" / "prepay-rating.md"


def test_documented_samples_are_valid():
    blocks = [tomllib.loads(b) for b in re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)]
    errors: list[FieldError] = []
    tariffs = [b["tariffs"] for b in blocks if "tariffs" in b]
    prepay = [b["prepay"] for b in blocks if "prepay" in b]
    assert tariffs and prepay
    catalogue = parse_tariffs(tariffs[0], errors)
    parse_prepay(prepay[0], errors)
    assert not errors, [str(e) for e in errors]
    assert {"residential", "shanghai", "water", "shops"} <= set(catalogue.tariffs)
