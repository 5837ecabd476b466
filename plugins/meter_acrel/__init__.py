"""Acrel meters over Modbus: DDSY1352 / DTSY1352 prepaid meters with relay, and the
metering-only DTSD1352 (≈ ADL400) and ADW300. See README.md in this folder."""
