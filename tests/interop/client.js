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

const {
  AttributeIds,
  DataType,
  Variant,
  BrowseDirection,
  NodeClassMask,
  makeBrowsePath,
  StatusCodes,
} = require("node-opcua-client");
const { say, readConfig, openSession, awaitServerEvent, close, run } = require("./session");

async function main() {
  const config = readConfig();
  const opened = await openSession(config, "OpenPrepay interop test", { announce: true });
  const { session, t, s } = opened;

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
  const fields = ["EventType", "SourceName", "Message", "Severity", "Retain", `${t}:AlarmLevel`,
    `${t}:Balance`, `${t}:AccountId`];
  const lowBalanceType = `ns=${t};s=LowBalanceAlarmType`;
  const { subscription, seen } = await awaitServerEvent(session, fields, {
    convert: (v) => (v && v.toString ? (typeof v === "object" ? v.toString() : v) : v),
    match: (event) => event.EventType === lowBalanceType && event.AccountId === config.account,
    timeoutMessage: "no LowBalance event within 30 s",
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
  await close(opened, subscription);
  say("summary", {
    ok: true,
    before: before.value.value,
    after: newBalance,
    event,
  });
}

run(main);
