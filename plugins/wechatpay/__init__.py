"""WeChat Pay API v3 (direct merchant) as an OpenPrepay payment provider."""
