"""WeChat web OAuth with scope `snsapi_base`: the payer's openid, silently, inside WeChat.

1. The tenant page redirects the browser to
   `<wechat_oauth_url>/connect/oauth2/authorize?appid=…&redirect_uri=…&response_type=code
   &scope=snsapi_base&state=…#wechat_redirect`;
2. WeChat sends the browser back to `redirect_uri?code=…&state=…` (the code is good once,
   for 5 minutes; `state` at most 128 bytes — ours ties the answer to the session);
3. the server trades the code for the openid:
   `GET <wechat_api_url>/sns/oauth2/access_token?appid=…&secret=…&code=…
   &grant_type=authorization_code` → `{"openid": …, "access_token": …}` or
   `{"errcode": …, "errmsg": …}`.

Both base URLs are configurable (`[web] wechat_oauth_url`, `wechat_api_url`) for the
test suite's emulator. The AppSecret never leaves this server.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

import aiohttp

_OPENID = re.compile(r"^[0-9A-Za-z_-]{6,128}$")


class OAuthFailed(Exception):
    pass


def authorize_url(oauth_url: str, appid: str, redirect_uri: str, state: str) -> str:
    query = urlencode(
        {
            "appid": appid,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": "snsapi_base",
            "state": state,
        }
    )
    return f"{oauth_url}/connect/oauth2/authorize?{query}#wechat_redirect"


async def fetch_openid(
    api_url: str, appid: str, app_secret: str, code: str, *, timeout_s: float = 10.0
) -> str:
    """Trade an OAuth `code` for the payer's openid (`OAuthFailed` with WeChat's reason)."""
    if not code or len(code) > 512:
        raise OAuthFailed("no code")
    params = {
        "appid": appid,
        "secret": app_secret,
        "code": code,
        "grant_type": "authorization_code",
    }
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"{api_url}/sns/oauth2/access_token", params=params) as answer,
        ):
            # WeChat answers JSON as text/plain: read it whatever the content type.
            data = await answer.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise OAuthFailed(f"WeChat OAuth unreachable: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise OAuthFailed("WeChat OAuth answered no object")
    if data.get("errcode"):
        raise OAuthFailed(f"WeChat OAuth error {data.get('errcode')}: {data.get('errmsg')}")
    openid = data.get("openid")
    if not isinstance(openid, str) or not _OPENID.match(openid):
        raise OAuthFailed("WeChat OAuth answered no openid")
    return openid
