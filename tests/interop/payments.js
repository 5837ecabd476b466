// An independent OPC UA client (node-opcua) reading the Payments object and receiving the
// payment conflict alarm.
//
// Driven by tests/opcua_server/test_interop_payments.py:
//   node payments.js <config.json>
// It connects with Basic256Sha256 SignAndEncrypt and a user name, browses
// Objects/OpenPrepay/Payments, checks its type (PaymentsType), reads its figures (the
// reconciliation ones are BadWaitingForInitialData on a site without one), subscribes to
// events on the Server object and prints {"step": "subscribed"}; the test then makes a
// mismatched payment, and the client waits for its PaymentConflictAlarmType. Every step
// prints one JSON line; the last line is the summary.
"use strict";

const { makeBrowsePath, StatusCodes, AttributeIds } = require("node-opcua-client");
const { say, readConfig, openSession, awaitServerEvent, close, run } = require("./session");

// node-opcua gives Int64 as [high, low].
function plain(v) {
  if (typeof v === "bigint") return Number(v);
  if (Array.isArray(v) && v.length === 2) return v[0] * 4294967296 + v[1];
  if (v && typeof v === "object" && v.toString) return v.toString();
  return v;
}

async function main() {
  const config = readConfig();
  const opened = await openSession(config, "OpenPrepay interop test (payments)");
  const { session, t, s } = opened;

  const path = await session.translateBrowsePath(
    makeBrowsePath("ObjectsFolder", `/${s}:OpenPrepay/${s}:Payments`),
  );
  if (!path.statusCode.equals(StatusCodes.Good)) {
    throw new Error(`Payments not found: ${path.statusCode.toString()}`);
  }
  const payments = path.targets[0].targetId;
  const typeRefs = await session.browse({
    nodeId: payments,
    referenceTypeId: "i=40", // HasTypeDefinition
    resultMask: 63,
  });
  const type = typeRefs.references[0].nodeId;
  say("payments", { nodeId: payments.toString(), type: type.value, typeNs: type.namespace });

  const figures = {};
  for (const name of ["OrdersCreated", "OrdersCredited", "Conflicts", "CreditedTodayFen",
    "LastReconciliationTime", "LastReconciliationResult"]) {
    const r = await session.translateBrowsePath(makeBrowsePath(payments, `/${s}:${name}`));
    if (!r.statusCode.equals(StatusCodes.Good)) throw new Error(`no ${name} under Payments`);
    const dv = await session.read({ nodeId: r.targets[0].targetId, attributeId: AttributeIds.Value });
    figures[name] = { status: dv.statusCode.name, value: plain(dv.value.value) };
  }
  say("figures", { figures });

  const fields = ["EventType", "SourceName", "Message", "Severity", "Retain",
    `${t}:OutTradeNo`, `${t}:Channel`, `${t}:AccountId`, `${t}:AmountFen`, `${t}:Reason`];
  const conflictType = `ns=${t};s=PaymentConflictAlarmType`;
  const { subscription, seen } = await awaitServerEvent(session, fields, {
    convert: plain,
    match: (event) => event.EventType === conflictType && event.OutTradeNo === config.outTradeNo,
    timeoutMessage: "no PaymentConflict within 30 s",
  });
  say("subscribed", {});

  const event = await seen;
  await close(opened, subscription);
  say("summary", { ok: true, figures, event });
}

run(main);
