"""The web service inside the running service (aiohttp on its event loop): the payment
providers' callbacks (`POST /pay/notify/<channel>`) and `GET /health`, configured in the
site file's `[web]` section and off without it. See README.md."""
