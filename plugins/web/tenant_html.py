"""The tenant page's HTML: mobile first, one column, no external JS or CSS (the page's
Content-Security-Policy allows its own origin only); every value escaped."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import tzinfo
from decimal import Decimal
from html import escape

import segno

from openprepay.core.money import format_fen
from openprepay.core.operations import RoomView

from .tenant_view import PayOption, supply_word

Words = Callable[..., str]

CSS = """
:root { --fg:#1d2733; --muted:#5b6776; --line:#e3e7ec; --accent:#1a7f37; --warn:#b42318; }
* { box-sizing: border-box; }
body { margin:0; font: 16px/1.45 -apple-system, "PingFang SC", "Noto Sans CJK SC",
  "Microsoft YaHei", sans-serif; color: var(--fg); background:#f5f7f9; }
main { max-width: 480px; margin: 0 auto; padding: 12px; }
header { display:flex; justify-content:space-between; align-items:baseline; }
h1 { font-size: 1.2em; margin: 8px 0; }
h2 { font-size: 1em; margin: 0 0 6px; color: var(--muted); }
section { background:#fff; border:1px solid var(--line); border-radius:10px;
  padding:12px; margin:10px 0; }
.big { font-size: 2em; font-weight: 600; }
.row { display:flex; justify-content:space-between; gap:8px; padding:3px 0; }
.muted { color: var(--muted); font-size: .9em; }
.off, .error { color: var(--warn); }
.on { color: var(--accent); }
table { width:100%; border-collapse: collapse; font-size: .95em; }
td, th { text-align:left; padding:4px 2px; border-bottom:1px solid var(--line); }
td.n, th.n { text-align:right; }
.presets { display:grid; grid-template-columns: repeat(4, 1fr); gap:6px; }
.presets label { border:1px solid var(--line); border-radius:8px; text-align:center;
  padding:10px 0; }
.presets input { display:none; }
.presets input:checked + span { font-weight:700; color: var(--accent); }
input[type=text] { width:100%; font-size:1.1em; padding:10px; margin:8px 0;
  border:1px solid var(--line); border-radius:8px; }
button { width:100%; font-size:1.1em; padding:12px; margin:4px 0; border:0;
  border-radius:8px; background: var(--accent); color:#fff; }
button.alipay { background:#1677ff; }
.qr { text-align:center; }
.qr svg { width: 70%; height: auto; }
ol.steps { padding-left: 1.2em; }
ol.steps li.done { color: var(--accent); font-weight: 600; }
a { color: #0b63c1; }
"""

#: The page's only script: WeChat's JSAPI payment (read from data attributes, no inline JS).
JS = """(function () {
  var el = document.getElementById('jsapi');
  if (!el) { return; }
  var params = JSON.parse(el.getAttribute('data-params'));
  var follow = el.getAttribute('data-follow');
  function pay() {
    if (typeof WeixinJSBridge === 'undefined') { return; }
    WeixinJSBridge.invoke('getBrandWCPayRequest', params, function () {
      window.location.href = follow;
    });
  }
  document.getElementById('jsapi-pay').addEventListener('click', pay);
  if (typeof WeixinJSBridge === 'undefined') {
    document.addEventListener('WeixinJSBridgeReady', pay, false);
  } else {
    pay();
  }
})();
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _units(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01'))}"


def _doc(
    w: Words, lang: str, body: str, *, refresh: str | None = None, script: bool = False
) -> str:
    head = [
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{_e(w('title'))}</title>",
        '<link rel="stylesheet" href="/t/static/tenant.css">',
        '<link rel="icon" href="data:,">',  # no favicon request
    ]
    if refresh:
        head.append(f'<meta http-equiv="refresh" content="{_e(refresh)}">')
    if script:
        head.append('<script src="/t/static/tenant.js" defer></script>')
    html_lang = "zh-CN" if lang == "zh" else "en"
    return (
        f'<!doctype html><html lang="{html_lang}"><head>{"".join(head)}</head>'
        f"<body><main>{body}</main></body></html>"
    )


def _switch(w: Words, lang: str, path: str) -> str:
    other = "en" if lang == "zh" else "zh"
    return f'<a class="lang" href="{_e(path)}?lang={other}">{_e(w("switch"))}</a>'


def message_page(w: Words, lang: str, key: str) -> str:
    body = f"<header><h1>{_e(w('title'))}</h1></header><section><p>{_e(w(key))}</p></section>"
    return _doc(w, lang, body)


def room_page(
    w: Words,
    lang: str,
    view: RoomView,
    *,
    options: Sequence[PayOption],
    presets: Sequence[int],
    minimum_fen: int,
    form_token: str,
    tz: tzinfo,
    error: str | None = None,
    amount_text: str = "",
) -> str:
    s = view.snapshot
    supply = supply_word(view)
    supply_class = {"supply_on": "on", "supply_off": "off"}.get(supply, "muted")
    parts = [
        f"<header><h1>{_e(w('title'))}</h1>{_switch(w, lang, '/t')}</header>",
        f'<section id="balance"><h2>{_e(w("room"))} {_e(view.room)}</h2>'
        f'<div class="muted">{_e(w("balance"))}</div>'
        f'<div class="big" data-fen="{s.balance_fen}">¥{_e(format_fen(s.balance_fen))}</div>'
        f'<div class="row"><span>{_e(w("fee_state"))}</span>'
        f'<span id="fee-state">{_e(w("fee_" + s.fee_state.value))}</span></div>'
        f'<div class="row"><span>{_e(w("supply"))}</span>'
        f'<span id="supply" class="{supply_class}">{_e(w(supply))}</span></div></section>',
    ]
    # Usage: electricity and water, today and this month, with the energy wallet's cost.
    rows = [
        f"<tr><th></th><th class='n'>{_e(w('today'))}</th><th class='n'>{_e(w('month'))}</th></tr>"
    ]
    if any(m.kind != "water" for m in s.meters):
        rows.append(
            f"<tr><td>{_e(w('electricity'))} (kWh)</td><td class='n'>{_units(s.energy_today_kwh)}"
            f"</td><td class='n'>{_units(view.month_kwh)}</td></tr>"
        )
    if any(m.kind == "water" for m in s.meters):
        rows.append(
            f"<tr><td>{_e(w('water'))} (m³)</td><td class='n'>{_units(s.water_today_m3)}</td>"
            f"<td class='n'>{_units(view.month_m3)}</td></tr>"
        )
    rows.append(
        f"<tr><td>{_e(w('cost'))} ({_e(w('yuan'))})</td>"
        f"<td class='n'>{_e(format_fen(s.cost_today_fen))}</td>"
        f"<td class='n'>{_e(format_fen(view.month_cost_fen))}</td></tr>"
    )
    parts.append(f'<section id="usage"><h2>{_e(w("usage"))}</h2><table>{"".join(rows)}</table>')
    for p in view.prices:
        what = w("water") if p.kind == "water" else w("electricity")
        rates = " / ".join(
            (f"{_e(name)} " if len(p.rates) > 1 else "") + f"{_e(price)}" for name, price in p.rates
        )
        parts.append(
            f'<div class="row price"><span>{_e(w("price"))} · {_e(what)}</span>'
            f"<span>{rates or _e(p.structure)} {_e(w('yuan'))}/{_e(p.unit)}</span></div>"
        )
    parts.append("</section>")
    # Recharge.
    error_html = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
    preset_html = "".join(
        f'<label><input type="radio" name="preset" value="{p}"{" checked" if i == 1 else ""}>'
        f"<span>{p} {_e(w('yuan'))}</span></label>"
        for i, p in enumerate(presets)
    )
    buttons = "".join(
        f'<button type="submit" name="pay" value="{_e(o.channel)}:{_e(o.method)}"'
        f' class="{_e(o.channel)}">{_e(w("pay_" + o.channel))}</button>'
        for o in options
    )
    if not options:
        buttons = f'<p class="muted">{_e(w("unavailable"))}</p>'
    parts.append(
        f'<section id="recharge"><h2>{_e(w("recharge"))}</h2>{error_html}'
        f'<form method="post" action="/t/pay?lang={lang}">'
        f'<input type="hidden" name="form" value="{_e(form_token)}">'
        f'<div class="presets">{preset_html}</div>'
        f'<input type="text" name="other" inputmode="decimal" autocomplete="off" '
        f'placeholder="{_e(w("other_amount"))}" value="{_e(amount_text)}">'
        f'<div class="muted">{_e(w("minimum"))} ¥{_e(format_fen(minimum_fen))}</div>'
        f"{buttons}</form></section>"
    )
    # Open bills and charges.
    if view.open_bills:
        bills = "".join(
            f"<tr><td>{_e(b.period)}</td><td>{_e(b.number)}</td>"
            f"<td class='n'>{_e(format_fen(b.outstanding_fen))}</td></tr>"
            for b in view.open_bills
        )
        bills_html = f"<table>{bills}</table>"
    else:
        bills_html = f'<p class="muted">{_e(w("no_open_bills"))}</p>'
    owed = s.owed_fen
    owed_html = (
        f'<div class="row off"><span>{_e(w("owed"))}</span><span>¥{format_fen(owed)}</span></div>'
        if owed
        else ""
    )
    parts.append(
        f'<section id="bills"><h2>{_e(w("open_bills"))}</h2>{owed_html}{bills_html}</section>'
    )
    # Recharge history.
    if view.recharges:
        rows_r = "".join(
            f"<tr><td>{_e(r.at.astimezone(tz).strftime('%Y-%m-%d %H:%M'))}</td>"
            f"<td>{_e(w('ch_' + r.channel) if ('ch_' + r.channel) in _KNOWN else r.channel)}</td>"
            f"<td class='n'>{_e(format_fen(r.amount_fen))}</td></tr>"
            for r in view.recharges
        )
        history = f"<table>{rows_r}</table>"
    else:
        history = f'<p class="muted">{_e(w("no_recharges"))}</p>'
    parts.append(f'<section id="history"><h2>{_e(w("recharges"))}</h2>{history}</section>')
    return _doc(w, lang, "".join(parts))


_KNOWN = {"ch_wechat", "ch_alipay", "ch_cash"}


def qr_svg(content: str) -> str:
    """A QR code as inline SVG (no image request, nothing external)."""
    return segno.make(content, error="m").svg_inline(scale=6, border=2)


def order_page(
    w: Words,
    lang: str,
    *,
    out_trade_no: str,
    amount_fen: int,
    channel: str,
    steps: Sequence[str],
    code_url: str | None,
    jsapi: dict[str, str] | None,
    follow: bool,
    balance_fen: int | None = None,
) -> str:
    done = set(steps)
    final = bool(done & {"restored", "closed", "conflict", "refunded"})
    parts = [
        f"<header><h1>{_e(w('title'))}</h1>{_switch(w, lang, f'/t/order/{out_trade_no}')}</header>",
        f'<section><div class="row"><span>{_e(w("order"))}</span>'
        f'<span class="muted">{_e(out_trade_no)}</span></div>'
        f'<div class="big">¥{_e(format_fen(amount_fen))}</div></section>',
    ]
    waiting = "waiting" in done
    if waiting and jsapi is not None and not follow:
        params = _e(json.dumps(jsapi, separators=(",", ":")))
        parts.append(
            f'<section id="jsapi" data-params="{params}" '
            f'data-follow="/t/order/{_e(out_trade_no)}?follow=1&amp;lang={lang}">'
            f'<button id="jsapi-pay" type="button">{_e(w("open_wechat_pay"))}</button></section>'
        )
    elif waiting and code_url:
        app = w("pay_" + channel)
        parts.append(
            f'<section class="qr" id="pay-qr"><p>{_e(w("scan", app=app))}</p>'
            f"{qr_svg(code_url)}</section>"
        )
    if waiting:
        items = [("waiting", "state_waiting")]
    elif done & {"closed", "conflict", "refunded"}:
        items = [(steps[0], "state_" + steps[0])]
    else:
        last = "restored" if "restored" in done else "restoring"
        items = [("paid", "state_paid"), ("credited", "state_credited"), (last, "state_" + last)]
    lis = "".join(
        f'<li id="step-{name}" class="{"done" if name in done and name != "restoring" else ""}">'
        f"{_e(w(key))}</li>"
        for name, key in items
    )
    balance = ""
    if balance_fen is not None and "credited" in done:
        balance = (
            f'<div class="row"><span>{_e(w("balance"))}</span>'
            f'<span id="new-balance">¥{_e(format_fen(balance_fen))}</span></div>'
        )
    parts.append(f'<section id="progress"><ol class="steps">{lis}</ol>{balance}</section>')
    parts.append(f'<p><a href="/t?lang={lang}">{_e(w("back"))}</a></p>')
    refresh = None if final or (jsapi is not None and not follow and waiting) else "2"
    return _doc(w, lang, "".join(parts), refresh=refresh, script=jsapi is not None)
