"""`openprepay qr SITE [--rooms …] --out sheet.html`: printable sheets of the rooms'
signed tenant-page links, one A4 sheet per floor, a QR code per room with its number
(cut out and stick on the meter box or the door), and the room QR image the bill export
prints (`openprepay_room_payment_qr`)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime
from html import escape
from itertools import groupby
from typing import Any

import segno

from openprepay.core.errors import RequestError

from .room_links import sign_room_link
from .tenant_settings import TenantSettings

SHEET_CSS = """
@page { size: A4; margin: 12mm; }
body { font-family: "Noto Sans CJK SC", "PingFang SC", sans-serif; margin: 0; }
.sheet { page-break-after: always; break-after: page; }
.sheet:last-child { page-break-after: auto; break-after: auto; }
h1 { font-size: 14pt; margin: 0 0 4mm; }
.grid { display: grid; grid-template-columns: repeat(3, 1fr); gap: 6mm; }
.card { border: 1px dashed #999; padding: 3mm; text-align: center; break-inside: avoid; }
.card svg { width: 45mm; height: 45mm; }
.room { font-size: 16pt; font-weight: 700; }
.hint { font-size: 8pt; color: #444; }
"""


def room_url(
    settings: TenantSettings, public_base_url: str, site: str, room: str, now: datetime
) -> str:
    return f"{public_base_url}/r/{sign_room_link(settings, site, room, now)}"


def qr_data_uri(content: str) -> str:
    """A QR code as an SVG data URI (for an <img> in a printed page)."""
    svg = segno.make(content, error="m").svg_inline(scale=4, border=2)
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")


def pick_rooms(site: Any, wanted: Sequence[str] | None) -> list[Any]:
    """The rooms asked for (all when none), in site order; an unknown one is refused."""
    if not wanted:
        return list(site.rooms.values())
    unknown = [r for r in wanted if r not in site.rooms]
    if unknown:
        raise RequestError(
            "rooms", f"unknown room(s) {', '.join(unknown)} (rooms are in the site file's [rooms])"
        )
    return [site.rooms[r] for r in dict.fromkeys(wanted)]


def sheet_html(
    site: Any, settings: TenantSettings, public_base_url: str, rooms: Sequence[Any], now: datetime
) -> str:
    """One sheet per (building, floor), rooms in order, each with its QR and number."""
    parts = []
    key = lambda r: (r.building, r.floor)  # noqa: E731
    for (building, floor), group in groupby(sorted(rooms, key=key), key=key):
        cards = []
        for room in group:
            url = room_url(settings, public_base_url, site.id, room.id, now)
            svg = segno.make(url, error="m").svg_inline(scale=4, border=2)
            cards.append(
                f'<div class="card" data-room="{escape(room.id)}">{svg}'
                f'<div class="room">{escape(room.name or room.id)}</div>'
                '<div class="hint">扫码查询余额、充值 · Scan to check and pay</div></div>'
            )
        title = f"{escape(site.info.name)} · {escape(building)} · {escape(floor)}F"
        parts.append(
            f'<section class="sheet"><h1>{title}</h1><div class="grid">{"".join(cards)}</div>'
            "</section>"
        )
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        f"<title>{escape(site.info.name)} QR</title><style>{SHEET_CSS}</style></head>"
        f"<body>{''.join(parts)}</body></html>"
    )
