"""Prepayment in the OPC UA server, an extension of the service (extension.ServerExtension).

- nodes.py — AccountType and one `OpenPrepay/Accounts/<account>` object per account;
- methods.py — TopUp, Refund, ... on accounts and meters, and Acknowledge on alarms;
- alarms.py — the core's prepayment events as OPC UA alarms, events and audit events;
- view.py — `AccountView`: the extension that puts them together and keeps accounts fresh.
"""
