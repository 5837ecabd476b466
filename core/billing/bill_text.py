"""The words of printed bills and arrears notices, one table per language.

Everything a tenant reads on a bill or a notice comes from here (`Words(language)`), in
plain language: no ledger terms, no internal ids beyond the bill, account and meter
numbers a tenant quotes when asking. Both tables have the same keys (a test holds them
to it); a missing key is a `KeyError`, never English text on a Chinese bill. Names the
site file gives (the issuer, a charge's name, the payment instructions) are printed as
written.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

ZH: Mapping[str, str] = {
    "sep": "：",
    "list_sep": "；",
    "bill_title": "缴费通知单",
    "notice_title": "欠费催缴通知书",
    "bill_number": "账单编号",
    "account": "户号",
    "tenant": "户名",
    "room": "房号",
    "period": "计费周期",
    "period_span": "{start} 至 {end}",
    "issued": "出账日期",
    "due": "缴费截止日",
    "due_on_issue": "出账时确定",
    "date": "通知日期",
    "state": "账单状态",
    "state.DRAFT": "草稿（未确认）",
    "state.CONFIRMED": "已确认，待出账",
    "state.ISSUED": "待缴费",
    "state.PAID": "已缴清",
    "state.VOID": "已作废",
    "col_item": "收费项目",
    "col_quantity": "用量/数量",
    "col_price": "单价",
    "col_amount": "金额（{currency}）",
    "electricity": "电费",
    "water": "水费",
    "meter.electricity": "电表 {meter}",
    "meter.water": "水表 {meter}",
    "rate.sharp": "尖峰",
    "rate.peak": "高峰",
    "rate.flat": "平段",
    "rate.valley": "低谷",
    "tier": "第{n}档",
    "tier_surcharge": "第{n}档加价",
    "tier_rate_surcharge": "第{n}档加价（{rate}）",
    "segment": "{start} 至 {end}",
    "common_area.electricity": "公摊电费 {period}",
    "common_area.water": "公摊水费 {period}",
    "share.public.electricity": "公共区域用电",
    "share.public.water": "公共区域用水",
    "share.loss": "线损",
    "share": "{what} {units} {unit} × {price} = {total}，按{method} {mine}/{of} 分摊 → {share}",
    "method.area": "面积",
    "method.equal": "户数",
    "method.consumption": "用量",
    "method.ratio": "约定比例",
    "rooms": "户",
    "late_fee": "滞纳金",
    "late_fee_detail": "账单 {bill} 逾期 {days} 天，每天按欠费的 {rate} 计",
    "days": "{n} 天",
    "days_of": "{n}/{of} 天",
    "per_day": "{rate}/天",
    "total": "本期应缴合计",
    "paid": "已缴金额",
    "outstanding": "尚欠金额",
    "payments": "已收款项",
    "col_paid_on": "日期",
    "col_channel": "方式",
    "col_reference": "凭证号",
    "col_paid": "计入本单（{currency}）",
    "channel.cash": "现金",
    "channel.wechat": "微信支付",
    "channel.alipay": "支付宝",
    "channel.bank": "银行转账",
    "channel.card": "银行卡",
    "channel.pos": "POS 刷卡",
    "channel.counter": "柜台缴费",
    "channel.unionpay": "云闪付",
    "channel.credit": "账户余额抵扣",
    "earlier_unpaid": "另有往期账单尚欠 {amount} {currency}，未计入本期合计，请一并缴纳。",
    "readings": "抄表读数",
    "col_meter": "表号",
    "col_previous": "上期读数",
    "col_current": "本期读数",
    "col_usage": "用量",
    "how_to_pay": "缴费方式",
    "scan_to_pay": "扫码缴费",
    "contact": "如有疑问，请联系",
    "phone": "电话",
    "address": "地址",
    "void_mark": "作废",
    "void_note": "本账单已作废，无需缴费（原因：{reason}）。如有重新出具的账单，以新账单为准。",
    "draft_note": "本账单为草稿，尚未确认，金额可能变化，请勿据此缴费。",
    "paid_note": "本账单已缴清，谢谢。",
    "common_area_note": "公摊费用单独列示，不计入电价或水价。",
    "supply_note": "物业费、租金等费用未缴，不会因此停电或停水。",
    "notice_intro": "截至 {date}，下列账单已过缴费截止日仍未缴清，共欠 {amount} {currency}。",
    "notice_ask": "请尽快缴清。滞纳金按逾期天数累计，计入下一期账单。如您已缴费，请忽略本通知。",
    "col_bill": "账单编号",
    "col_period": "计费周期",
    "col_due": "截止日",
    "col_days_overdue": "逾期天数",
    "col_outstanding": "尚欠（{currency}）",
    "col_late_fee": "滞纳金（截至通知日）",
    "notice_total": "合计",
}

EN: Mapping[str, str] = {
    "sep": ": ",
    "list_sep": "; ",
    "bill_title": "Bill",
    "notice_title": "Notice of arrears",
    "bill_number": "Bill number",
    "account": "Account",
    "tenant": "Name",
    "room": "Room",
    "period": "Billing period",
    "period_span": "{start} to {end}",
    "issued": "Issued",
    "due": "Please pay by",
    "due_on_issue": "set when the bill is issued",
    "date": "Date",
    "state": "Status",
    "state.DRAFT": "Draft (not confirmed)",
    "state.CONFIRMED": "Confirmed, not issued yet",
    "state.ISSUED": "Awaiting payment",
    "state.PAID": "Paid",
    "state.VOID": "Void",
    "col_item": "Item",
    "col_quantity": "Quantity",
    "col_price": "Unit price",
    "col_amount": "Amount ({currency})",
    "electricity": "Electricity",
    "water": "Water",
    "meter.electricity": "meter {meter}",
    "meter.water": "water meter {meter}",
    "rate.sharp": "critical peak",
    "rate.peak": "peak",
    "rate.flat": "standard",
    "rate.valley": "off-peak",
    "tier": "tier {n}",
    "tier_surcharge": "tier {n} surcharge",
    "tier_rate_surcharge": "tier {n} surcharge ({rate})",
    "segment": "{start} to {end}",
    "common_area.electricity": "Common-area electricity {period}",
    "common_area.water": "Common-area water {period}",
    "share.public.electricity": "public areas",
    "share.public.water": "public areas",
    "share.loss": "line loss",
    "share": "{what} {units} {unit} × {price} = {total}, by {method}: {mine} of {of} → {share}",
    "method.area": "floor area",
    "method.equal": "household",
    "method.consumption": "consumption",
    "method.ratio": "agreed ratio",
    "rooms": "households",
    "late_fee": "Late fee",
    "late_fee_detail": "bill {bill} overdue {days} days, {rate} of the amount due per day",
    "days": "{n} days",
    "days_of": "{n}/{of} days",
    "per_day": "{rate}/day",
    "total": "Total this bill",
    "paid": "Paid",
    "outstanding": "Amount due",
    "payments": "Payments received",
    "col_paid_on": "Date",
    "col_channel": "How",
    "col_reference": "Reference",
    "col_paid": "Applied to this bill ({currency})",
    "channel.cash": "cash",
    "channel.wechat": "WeChat Pay",
    "channel.alipay": "Alipay",
    "channel.bank": "bank transfer",
    "channel.card": "bank card",
    "channel.pos": "card terminal",
    "channel.counter": "at the counter",
    "channel.unionpay": "UnionPay",
    "channel.credit": "credit applied",
    "earlier_unpaid": (
        "Earlier bills still unpaid: {amount} {currency}, not included in this bill's "
        "total; please pay them too."
    ),
    "readings": "Meter readings",
    "col_meter": "Meter",
    "col_previous": "Previous",
    "col_current": "Current",
    "col_usage": "Usage",
    "how_to_pay": "How to pay",
    "scan_to_pay": "Scan to pay",
    "contact": "Questions about this bill? Contact",
    "phone": "Phone",
    "address": "Address",
    "void_mark": "VOID",
    "void_note": (
        "This bill is void and is not to be paid (reason: {reason}). A bill issued in its "
        "place, if any, replaces it."
    ),
    "draft_note": "This is a draft: not confirmed, amounts may change. Please do not pay it.",
    "paid_note": "This bill is paid. Thank you.",
    "common_area_note": (
        "The common-area share is its own line; it is not part of the electricity or water price."
    ),
    "supply_note": "Unpaid property fees, rent or service charges never cut your power or water.",
    "notice_intro": (
        "As of {date}, the bills below are past their due date and not fully paid: "
        "{amount} {currency} in all."
    ),
    "notice_ask": (
        "Please pay as soon as you can. Late fees accrue for each day overdue and are "
        "charged on your next bill. If you have paid already, please disregard this notice."
    ),
    "col_bill": "Bill",
    "col_period": "Period",
    "col_due": "Due",
    "col_days_overdue": "Days overdue",
    "col_outstanding": "Amount due ({currency})",
    "col_late_fee": "Late fee so far",
    "notice_total": "Total",
}

TABLES: Mapping[str, Mapping[str, str]] = {"zh": ZH, "en": EN}


class Words:
    """The words of one language: `words("tier", n=2)` → "第2档"."""

    def __init__(self, language: str, currency: str = "CNY") -> None:
        self.language = language
        self.table = TABLES[language]
        #: How amounts are labelled: 元 on a Chinese bill in CNY, else the currency code.
        self.currency = "元" if language == "zh" and currency == "CNY" else currency

    def __call__(self, key: str, **values: Any) -> str:
        return self.table[key].format(**{"currency": self.currency, **values})

    def optional(self, key: str, fallback: str, **values: Any) -> str:
        """The words for `key`, or `fallback` when there are none (a rate, a payment
        channel or a state the tables do not know is shown as the site named it)."""
        return self(key, **values) if key in self.table else fallback

    def percent(self, share: Decimal) -> str:
        """0.001 → "0.1%"."""
        return f"{(share * 100).normalize():f}%"
