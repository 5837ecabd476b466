"""The tenant page's words: Chinese by default, English on request (`?lang=en`)."""

from __future__ import annotations

from collections.abc import Callable

LANGUAGES = ("zh", "en")

WORDS: dict[str, dict[str, str]] = {
    "title": {"zh": "水电缴费", "en": "Electricity & water"},
    "room": {"zh": "房间", "en": "Room"},
    "balance": {"zh": "剩余金额", "en": "Balance"},
    "fee_state": {"zh": "费控状态", "en": "Fee state"},
    "supply": {"zh": "供电/供水", "en": "Supply"},
    "supply_on": {"zh": "正常供应", "en": "On"},
    "supply_off": {"zh": "已断开", "en": "Cut"},
    "supply_unknown": {"zh": "未知", "en": "Unknown"},
    "today": {"zh": "今日", "en": "Today"},
    "month": {"zh": "本月", "en": "This month"},
    "cost": {"zh": "费用", "en": "Cost"},
    "usage": {"zh": "用量", "en": "Usage"},
    "electricity": {"zh": "电", "en": "Electricity"},
    "water": {"zh": "水", "en": "Water"},
    "price": {"zh": "单价", "en": "Price"},
    "recharges": {"zh": "充值记录", "en": "Recharges"},
    "no_recharges": {"zh": "暂无充值记录", "en": "No recharges yet"},
    "open_bills": {"zh": "待缴账单与费用", "en": "Open bills and charges"},
    "no_open_bills": {"zh": "没有待缴账单", "en": "Nothing owed"},
    "owed": {"zh": "欠费", "en": "Owed"},
    "due": {"zh": "到期", "en": "due"},
    "recharge": {"zh": "充值", "en": "Recharge"},
    "other_amount": {"zh": "其他金额（元）", "en": "Other amount (yuan)"},
    "minimum": {"zh": "最低充值", "en": "Minimum"},
    "pay_wechat": {"zh": "微信支付", "en": "WeChat Pay"},
    "pay_alipay": {"zh": "支付宝", "en": "Alipay"},
    "yuan": {"zh": "元", "en": "yuan"},
    "scan": {"zh": "请用{app}扫码支付", "en": "Scan with {app} to pay"},
    "open_wechat_pay": {"zh": "打开微信支付", "en": "Open WeChat Pay"},
    "order": {"zh": "订单", "en": "Order"},
    "state_waiting": {"zh": "等待支付…", "en": "Waiting for payment…"},
    "state_paid": {"zh": "已支付", "en": "Paid"},
    "state_credited": {"zh": "已到账", "en": "Credited"},
    "state_restored": {"zh": "已恢复供电", "en": "Supply restored"},
    "state_restoring": {"zh": "正在恢复供电…", "en": "Restoring supply…"},
    "state_closed": {"zh": "订单已关闭", "en": "Order closed"},
    "state_conflict": {"zh": "订单待人工核对", "en": "Order held for a check by staff"},
    "state_refunded": {"zh": "已退款", "en": "Refunded"},
    "back": {"zh": "返回", "en": "Back"},
    "refused": {"zh": "无法充值", "en": "Cannot recharge"},
    "bad_amount": {"zh": "请输入金额，例如 50 或 50.00", "en": "Enter an amount, e.g. 50 or 50.00"},
    "below_minimum": {
        "zh": "金额低于最低充值 {minimum} 元",
        "en": "Below the minimum of {minimum} yuan",
    },
    "above_limit": {"zh": "超过囤积上限，最多还可充值 {room} 元", "en": "Above the hoarding limit"},
    "link_invalid": {
        "zh": "二维码无效或已过期，请扫描电表上的最新二维码。",
        "en": "This QR code is not valid or has expired: scan the current code on the meter.",
    },
    "no_session": {
        "zh": "请扫描电表或房门上的二维码进入。",
        "en": "Scan the QR code on your meter or door to open your room.",
    },
    "no_account": {
        "zh": "该房间暂未开户，请联系物业。",
        "en": "No open account for this room: ask the property office.",
    },
    "busy": {"zh": "请求过于频繁，请稍后再试。", "en": "Too many requests: try again shortly."},
    "unavailable": {
        "zh": "暂时无法支付，请稍后再试。",
        "en": "Payment is unavailable now: try again later.",
    },
    "switch": {"zh": "English", "en": "中文"},
    "fee_NORMAL": {"zh": "正常", "en": "Normal"},
    "fee_ALARM1": {"zh": "余额不足提醒", "en": "Low balance"},
    "fee_ALARM2": {"zh": "余额严重不足", "en": "Very low balance"},
    "fee_OVER_ZERO": {"zh": "已欠费", "en": "Below zero"},
    "fee_OVERDRAFT": {"zh": "透支超限", "en": "Overdrawn"},
    "ch_wechat": {"zh": "微信", "en": "WeChat"},
    "ch_alipay": {"zh": "支付宝", "en": "Alipay"},
    "ch_cash": {"zh": "现金", "en": "Cash"},
}


def words(lang: str) -> Callable[..., str]:
    """`w("balance")` → the word in `lang` (missing: the English, then the key)."""
    lang = lang if lang in LANGUAGES else "zh"

    def w(key: str, **values: object) -> str:
        entry = WORDS.get(key)
        text = (entry.get(lang) or entry.get("en") or key) if entry else key
        return text.format(**values) if values else text

    return w
