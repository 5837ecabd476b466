"""Run as a process: verify a callback, store its notice through the door, then die by
SIGKILL before crediting (what a power cut after the provider's answer leaves).

    python -m tests.payments.crash_after_store SITE DB_URL OUT_TRADE_NO HEADERS_JSON BODY_FILE
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from openprepay.core.app.plugins import Plugins
from openprepay.core.config.site import load_site
from openprepay.core.db import Database
from openprepay.core.operations import Operations

from .double import DoubleProvider


def main(site_file: str, url: str, headers_json: str, body_file: str) -> None:
    provider = DoubleProvider()
    site = load_site(site_file)
    ops = Operations(site, Database(url), models=Plugins.load().models)
    ops.use_providers([provider])
    notice = provider.verify(
        json.loads(headers_json), Path(body_file).read_bytes(), datetime.now(UTC)
    )
    ops.store_notice(notice, actor="web:test")
    print("stored", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(*sys.argv[1:])
