// An independent OPC UA client (node-opcua) against the OpenPrepay server.
//
// Driven by tests/opcua/test_interop.py:
//   node client.js <config.json>
// where the JSON names the endpoint, the user, the client certificate and key, the room and
// the top-up to make. It connects with Basic256Sha256 SignAndEncrypt and a user name,
// browses from the Objects folder to the room, finds the room's account (AccountType),
// reads its balance, subscribes to events on the Server object, calls TopUp and waits for
// the LowBalance alarm. Every step prints one JSON line; the last line is the summary.
"use strict";

const fs = require("fs");
const {
  OPCUAClient,
  MessageSecurityMode,
  SecurityPolicy,
  UserTokenType,
  AttributeIds,
  DataType,
  Variant,
  BrowseDirection,
  NodeClassMask,
  makeBrowsePath,
  constructEventFilter,
  StatusCodes,
  TimestampsToReturn,
} = require("node-opcua-client");
const { OPCUACertificateManager } = require("node-opcua-certificate-manager");

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
    applicationName: "OpenPrepay interop test",
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
  client.on("backoff", () => say("backoff", {}));

  await client.connect(config.endpoint);
  say("connected", { policy: "Basic256Sha256", mode: "SignAndEncrypt" });
  const session = await client.createSession({
    type: UserTokenType.UserName,
    userName: config.user,
    password: config.password,
  });
  say("session", { user: config.user });

  const namespaces = (await session.readNamespaceArray());
  const t = namespaces.indexOf("urn:openprepay:types");
  const s = namespaces.indexOf(config.siteUri);
  if (t < 0 || s < 0) throw new Error(`namespaces not found: ${namespaces}`);

  // Browse from Objects to the room by browse names.
  const roomPath =
    `/${s}:OpenPrepay/${t}:Sites/${s}:${config.site}/${t}:Buildings/${s}:${config.building}` +
    `/${t}:Floors/${s}:${config.floor}/${t}:Rooms/${s}:${config.room}`;
  const translated = await session.translateBrowsePath(makeBrowsePath("ObjectsFolder", roomPath));
  if (!translated.statusCode.equals(StatusCodes.Good)) {
    throw new Error(`room not found: ${translated.statusCode.toString()}`);
  }
  const room = translated.targets[0].targetId;
  say("room", { nodeId: room.toString() });

  // The room organises its account: find the child whose type is AccountType.
  const children = await session.browse({
    nodeId: room,
    browseDirection: BrowseDirection.Forward,
    includeSubtypes: true,
    nodeClassMask: NodeClassMask.Object,
    resultMask: 63,
  });
  const accountRef = children.references.find(
    (r) => r.typeDefinition.namespace === t && r.typeDefinition.value === "AccountType",
  );
  if (!accountRef) throw new Error("no AccountType child under the room");
  const account = accountRef.nodeId;
  say("account", { nodeId: account.toString(), name: accountRef.browseName.name });

  const child = async (name) => {
    const r = await session.translateBrowsePath(makeBrowsePath(account, `/${t}:${name}`));
    return r.targets[0].targetId;
  };
  const balanceNode = await child("Balance");
  const before = await session.read({ nodeId: balanceNode, attributeId: AttributeIds.Value });
  say("balance", { value: before.value.value, status: before.statusCode.name });

  // Events on the Server object, with LowBalance's own fields.
  const subscription = await session.createSubscription2({
    requestedPublishingInterval: 100,
    requestedLifetimeCount: 1000,
    requestedMaxKeepAliveCount: 10,
    maxNotificationsPerPublish: 1000,
    publishingEnabled: true,
    priority: 10,
  });
  const fields = ["EventType", "SourceName", "Message", "Severity", "Retain", `${t}:AlarmLevel`,
    `${t}:Balance`, `${t}:AccountId`];
  const filter = constructEventFilter(fields);
  const monitored = await subscription.monitor(
    { nodeId: "i=2253", attributeId: AttributeIds.EventNotifier },
    { queueSize: 100, filter, discardOldest: true },
    TimestampsToReturn.Neither,
  );
  const lowBalanceType = `ns=${t};s=LowBalanceAlarmType`;
  const seen = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no LowBalance event within 30 s")), 30000);
    monitored.on("changed", (values) => {
      const event = {};
      fields.forEach((f, i) => {
        const v = values[i].value;
        event[f.replace(/^\d+:/, "")] = v && v.toString ? (typeof v === "object" ? v.toString() : v) : v;
      });
      say("event", event);
      if (event.EventType === lowBalanceType && event.AccountId === config.account) {
        clearTimeout(timer);
        resolve(event);
      }
    });
  });

  // TopUp(Amount, Reference) on the account.
  const topUp = await session.call({
    objectId: account,
    methodId: `ns=${t};s=AccountType/TopUp`,
    inputArguments: [
      new Variant({ dataType: DataType.Double, value: config.amount }),
      new Variant({ dataType: DataType.String, value: config.reference }),
    ],
  });
  if (!topUp.statusCode.equals(StatusCodes.Good)) {
    throw new Error(`TopUp refused: ${topUp.statusCode.toString()}`);
  }
  const newBalance = topUp.outputArguments[0].value;
  say("topup", { balance: newBalance, replayed: topUp.outputArguments[1].value });

  const event = await seen;
  await subscription.terminate();
  await session.close();
  await client.disconnect();
  say("summary", {
    ok: true,
    before: before.value.value,
    after: newBalance,
    event,
  });
}

main().catch((err) => {
  say("summary", { ok: false, error: String(err && err.stack ? err.stack : err) });
  process.exit(1);
});
