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

const fs = require("fs");
const {
  OPCUAClient,
  MessageSecurityMode,
  SecurityPolicy,
  UserTokenType,
  AttributeIds,
  makeBrowsePath,
  constructEventFilter,
  StatusCodes,
  TimestampsToReturn,
} = require("node-opcua-client");
const { OPCUACertificateManager } = require("node-opcua-certificate-manager");

// node-opcua gives Int64 as [high, low].
function plain(v) {
  if (typeof v === "bigint") return Number(v);
  if (Array.isArray(v) && v.length === 2) return v[0] * 4294967296 + v[1];
  if (v && typeof v === "object" && v.toString) return v.toString();
  return v;
}

function say(step, data) {
  process.stdout.write(JSON.stringify({ step, ...data }) + "\n");
}

async function main() {
  const config = JSON.parse(fs.readFileSync(process.argv[2], "utf-8"));
  const certificateManager = new OPCUACertificateManager({
    rootFolder: config.pki,
    automaticallyAcceptUnknownCertificate: true,
  });
  const client = OPCUAClient.create({
    applicationName: "OpenPrepay interop test (payments)",
    applicationUri: config.applicationUri,
    securityMode: MessageSecurityMode.SignAndEncrypt,
    securityPolicy: SecurityPolicy.Basic256Sha256,
    certificateFile: config.certificate,
    privateKeyFile: config.privateKey,
    clientCertificateManager: certificateManager,
    endpointMustExist: false,
    connectionStrategy: { maxRetry: 0, initialDelay: 100 },
    requestedSessionTimeout: 60000,
  });
  await client.connect(config.endpoint);
  const session = await client.createSession({
    type: UserTokenType.UserName,
    userName: config.user,
    password: config.password,
  });
  say("session", { user: config.user });

  const namespaces = await session.readNamespaceArray();
  const t = namespaces.indexOf("urn:openprepay:types");
  const s = namespaces.indexOf(config.siteUri);
  if (t < 0 || s < 0) throw new Error(`namespaces not found: ${namespaces}`);

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

  const subscription = await session.createSubscription2({
    requestedPublishingInterval: 100,
    requestedLifetimeCount: 1000,
    requestedMaxKeepAliveCount: 10,
    maxNotificationsPerPublish: 1000,
    publishingEnabled: true,
    priority: 10,
  });
  const fields = ["EventType", "SourceName", "Message", "Severity", "Retain",
    `${t}:OutTradeNo`, `${t}:Channel`, `${t}:AccountId`, `${t}:AmountFen`, `${t}:Reason`];
  const monitored = await subscription.monitor(
    { nodeId: "i=2253", attributeId: AttributeIds.EventNotifier },
    { queueSize: 100, filter: constructEventFilter(fields), discardOldest: true },
    TimestampsToReturn.Neither,
  );
  const conflictType = `ns=${t};s=PaymentConflictAlarmType`;
  const seen = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no PaymentConflict within 30 s")), 30000);
    monitored.on("changed", (values) => {
      const event = {};
      fields.forEach((f, i) => {
        event[f.replace(/^\d+:/, "")] = plain(values[i].value);
      });
      say("event", event);
      if (event.EventType === conflictType && event.OutTradeNo === config.outTradeNo) {
        clearTimeout(timer);
        resolve(event);
      }
    });
  });
  say("subscribed", {});

  const event = await seen;
  await subscription.terminate();
  await session.close();
  await client.disconnect();
  say("summary", { ok: true, figures, event });
}

main().catch((err) => {
  say("summary", { ok: false, error: String(err && err.stack ? err.stack : err) });
  process.exit(1);
});
