"""Writing line protocol to the server: /api/v2/write through influxdb-client, or 1.x /write.

`InfluxWriter.write(body)` makes one attempt and classifies the answer; retrying, backing
off and quarantining are the sender's business (service.py):

- 2xx: acknowledged.
- 400, 413, 422: the server rejects the data itself (malformed line, field type conflict,
  too large, outside retention). Sending it again cannot help: the sender splits the batch
  to find the offending lines and quarantines only those.
- anything else (no connection, timeout, 5xx, 429, 401/403/404 while an operator fixes
  the configuration): retry later, honouring `Retry-After` when the server sends one.

Request bodies are gzip streams with `gzip = true` (the spool stores them that way, so
nothing is compressed twice) and plain line protocol otherwise. Calls block: the service
runs them in a thread.
"""

from __future__ import annotations

import base64
import email.utils
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import urllib3
from influxdb_client import InfluxDBClient
from influxdb_client.rest import ApiException
from influxdb_client.service.write_service import WriteService

from .config import Api, InfluxTarget
from .lineprotocol import gunzip, gzip_member

#: Statuses that mean "this data is wrong", not "try again later".
REJECTED = frozenset({400, 413, 422})


@dataclass(frozen=True, slots=True)
class WriteResult:
    ok: bool
    status: int | None = None
    error: str = ""
    #: Seconds the server asked us to wait (Retry-After), if it did.
    retry_after: float | None = None
    duration_s: float = 0.0

    @property
    def rejected(self) -> bool:
        return not self.ok and self.status in REJECTED


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _text(data: Any) -> str:
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    return str(data or "").strip()[:2000]


class InfluxWriter:
    def __init__(self, target: InfluxTarget) -> None:
        self.target = target
        self._client: InfluxDBClient | None = None
        self._service: WriteService | None = None
        self._http: urllib3.PoolManager | None = None
        if target.api is Api.V2:
            self._client = InfluxDBClient(
                url=target.url,
                token=target.token or "",
                org=target.org,
                timeout=int(target.timeout_s * 1000),
                enable_gzip=False,  # bodies arrive compressed; see write()
                verify_ssl=target.verify_ssl,
                retries=False,
            )
            self._service = WriteService(self._client.api_client)
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(total=target.timeout_s),
            retries=False,
            cert_reqs="CERT_REQUIRED" if target.verify_ssl else "CERT_NONE",
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._http is not None:
            self._http.clear()

    # -- HTTP plumbing shared with the reader ---------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        t = self.target
        if t.api is Api.V2 and t.token:
            return {"Authorization": f"Token {t.token}"}
        if t.username is not None:
            pair = f"{t.username}:{t.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        return {}

    def request(
        self, method: str, path: str, params: dict[str, str], body: bytes | None = None, **kw: Any
    ) -> urllib3.BaseHTTPResponse:
        assert self._http is not None
        headers = {**self.auth_headers(), **kw.pop("headers", {})}
        url = f"{self.target.url}{path}?{urlencode(params)}"
        return self._http.request(method, url, body=body, headers=headers, **kw)

    # -- writing --------------------------------------------------------------------------
    def write(self, payload: bytes) -> WriteResult:
        """One attempt to write lines: a gzip stream with `gzip = true`, else plain text."""
        gzip = self.target.gzip
        start = time.perf_counter()
        try:
            if self.target.api is Api.V2:
                assert self._service is not None and self.target.bucket is not None
                kwargs: dict[str, Any] = {"content_type": "text/plain; charset=utf-8"}
                if gzip:
                    kwargs["content_encoding"] = "gzip"
                self._service.post_write(
                    org=self.target.org,
                    bucket=self.target.bucket,
                    body=payload,
                    precision="ns",
                    **kwargs,
                )
            else:
                params = {"db": self.target.db or "", "precision": "ns"}
                if self.target.rp:
                    params["rp"] = self.target.rp
                headers = {"Content-Type": "text/plain; charset=utf-8"}
                if gzip:
                    headers["Content-Encoding"] = "gzip"
                response = self.request("POST", "/write", params, payload, headers=headers)
                if not 200 <= response.status < 300:
                    return WriteResult(
                        False,
                        response.status,
                        _text(response.data) or f"HTTP {response.status}",
                        parse_retry_after(response.headers.get("Retry-After")),
                    )
        except ApiException as exc:
            headers = exc.headers or {}
            return WriteResult(
                False,
                exc.status,
                _text(exc.body) or str(exc.reason),
                parse_retry_after(headers.get("Retry-After")),
            )
        except Exception as exc:  # connection refused, reset, timeout, TLS...
            return WriteResult(False, None, f"{type(exc).__name__}: {exc}")
        return WriteResult(True, 204, duration_s=time.perf_counter() - start)

    def payload(self, bodies: list[tuple[bytes, bool]]) -> bytes:
        """A request body in the target's encoding from (body, is gzip) pieces."""
        if self.target.gzip:
            return b"".join(body if gz else gzip_member(body) for body, gz in bodies)
        return b"".join(gunzip(body) if gz else body for body, gz in bodies)

    def ping(self) -> str:
        """A one-line description of the server's reachability (for status)."""
        try:
            response = self.request("GET", "/ping", {}, timeout=urllib3.Timeout(total=5))
        except Exception as exc:
            return f"unreachable ({type(exc).__name__}: {exc})"
        version = response.headers.get("X-Influxdb-Version", "")
        return f"HTTP {response.status}" + (f", version {version}" if version else "")

    def create_database(self) -> None:
        """CREATE DATABASE (1.x; idempotent). Raises on failure."""
        db = self.target.db or ""
        q = 'CREATE DATABASE "' + db.replace("\\", "\\\\").replace('"', '\\"') + '"'
        response = self.request("POST", "/query", {"q": q})
        if response.status != 200:
            raise RuntimeError(f"CREATE DATABASE failed: HTTP {response.status} {response.data!r}")
