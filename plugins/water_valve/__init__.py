"""Valve-controlled water meters over Modbus: the Kaifeng Xintai register map, a driver that
trusts the valve bits only while the meter does not flag its valve abnormal, and a
simulator with flow, valve travel and LOCAL prepaid volume. See README.md in this folder."""
