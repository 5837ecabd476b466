"""Engineering units: model unit strings to OPC UA EUInformation with UNECE codes.

OPC UA Part 8 §5.6.3: `UnitId` is the UNECE Recommendation 20 common code packed into an
Int32 (each character a byte, left to right), in the namespace
http://www.opcfoundation.org/UA/units/un/cefact. Units without a UNECE code (currencies,
plain counts) get UnitId -1 and keep their display name.
"""

from __future__ import annotations

from functools import cache

from asyncua import ua

UNECE_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"

#: unit string as the device models write it -> (UNECE common code, description)
UNECE: dict[str, tuple[str, str]] = {
    "kWh": ("KWH", "kilowatt hour"),
    "kvarh": ("K3", "kilovolt ampere (reactive) hour"),
    "V": ("VLT", "volt"),
    "A": ("AMP", "ampere"),
    "kW": ("KWT", "kilowatt"),
    "kvar": ("KVR", "kilovar"),
    "kVA": ("KVA", "kilovolt - ampere"),
    "Hz": ("HTZ", "hertz"),
    "m³": ("MTQ", "cubic metre"),
    "m3": ("MTQ", "cubic metre"),
    "m³/h": ("MQH", "cubic metre per hour"),
    "m3/h": ("MQH", "cubic metre per hour"),
    "%": ("P1", "percent"),
    "s": ("SEC", "second"),
    "ms": ("C26", "millisecond"),
    "B": ("AD", "byte"),
    "°C": ("CEL", "degree Celsius"),
}


def unit_id(code: str) -> int:
    """Pack a UNECE common code ("KWH") into the OPC UA UnitId."""
    value = 0
    for ch in code:
        value = (value << 8) | ord(ch)
    return value


@cache
def eu_information(unit: str) -> ua.EUInformation:
    known = UNECE.get(unit)
    if known is None:
        return ua.EUInformation(
            NamespaceUri=UNECE_NAMESPACE,
            UnitId=-1,
            DisplayName=ua.LocalizedText(unit),
            Description=ua.LocalizedText(unit),
        )
    code, description = known
    return ua.EUInformation(
        NamespaceUri=UNECE_NAMESPACE,
        UnitId=unit_id(code),
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(description),
    )
