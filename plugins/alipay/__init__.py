"""Alipay (支付宝开放平台) as an online payment channel: face-to-face QR (precreate), RSA2
notifications, query, close, refund and the daily trade bill. See README.md."""
