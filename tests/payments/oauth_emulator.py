"""WeChat web OAuth (snsapi_base) on loopback, for the tenant page's tests.

- `GET /connect/oauth2/authorize`: plays the payer's WeChat client, which (for snsapi_base)
  asks nothing: it sends the browser back to `redirect_uri?code=…&state=…` at once, with a
  one-time code for the emulator's current `openid`;
- `GET /sns/oauth2/access_token`: the server-side trade of the code (appid, AppSecret,
  code, grant_type checked; a code works once) for `{"openid": …}` or WeChat's
  `{"errcode": 40029, "errmsg": "invalid code"}`.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlencode

from aiohttp import web


class OAuthEmulator:
    def __init__(self, appid: str, app_secret: str, openid: str) -> None:
        self.appid = appid
        self.app_secret = app_secret
        self.openid = openid
        self.codes: dict[str, str] = {}
        self.authorized: list[dict[str, str]] = []
        self.exchanged = 0
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/connect/oauth2/authorize", self._authorize)
        app.router.add_get("/sns/oauth2/access_token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        self.authorized.append(dict(q))
        if q.get("appid") != self.appid or q.get("scope") != "snsapi_base":
            return web.Response(status=400, text="bad appid or scope")
        if len(q.get("state", "")) > 128:
            return web.Response(status=400, text="state too long")
        code = secrets.token_urlsafe(16)
        self.codes[code] = self.openid
        query = urlencode({"code": code, "state": q.get("state", "")})
        raise web.HTTPFound(f"{q['redirect_uri']}?{query}")

    async def _token(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        self.exchanged += 1
        if q.get("appid") != self.appid or q.get("secret") != self.app_secret:
            return _plain({"errcode": 40125, "errmsg": "invalid appsecret"})
        if q.get("grant_type") != "authorization_code":
            return _plain({"errcode": 40002, "errmsg": "invalid grant_type"})
        openid = self.codes.pop(q.get("code", ""), None)
        if openid is None:
            return _plain({"errcode": 40029, "errmsg": "invalid code"})
        return _plain(
            {
                "access_token": secrets.token_urlsafe(24),
                "expires_in": 7200,
                "refresh_token": secrets.token_urlsafe(24),
                "openid": openid,
                "scope": "snsapi_base",
            }
        )


def _plain(obj: dict[str, object]) -> web.Response:
    import json

    # WeChat answers JSON with a text/plain content type.
    return web.Response(text=json.dumps(obj), content_type="text/plain")
