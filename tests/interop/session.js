// What the node-opcua interop clients (client.js, payments.js) share: one JSON line a step,
// a Basic256Sha256 SignAndEncrypt session with a user name, the OpenPrepay namespaces, and
// a subscription to events on the Server object that waits for one event.
"use strict";

const fs = require("fs");
const {
  OPCUAClient,
  MessageSecurityMode,
  SecurityPolicy,
  UserTokenType,
  AttributeIds,
  constructEventFilter,
  TimestampsToReturn,
} = require("node-opcua-client");
const { OPCUACertificateManager } = require("node-opcua-certificate-manager");

function say(step, data) {
  process.stdout.write(JSON.stringify({ step, ...data }) + "\n");
}

// The test's JSON config, named by the first argument.
function readConfig() {
  return JSON.parse(fs.readFileSync(process.argv[2], "utf-8"));
}

// Connect and open a session as config.user; `announce` prints the "connected" step and
// every reconnection back-off. Returns { client, session, t, s } where t and s are the
// indexes of the types and the site namespaces.
async function openSession(config, applicationName, { announce = false } = {}) {
  const certificateManager = new OPCUACertificateManager({
    rootFolder: config.pki,
    automaticallyAcceptUnknownCertificate: true,
  });
  const client = OPCUAClient.create({
    applicationName,
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
  if (announce) client.on("backoff", () => say("backoff", {}));

  await client.connect(config.endpoint);
  if (announce) say("connected", { policy: "Basic256Sha256", mode: "SignAndEncrypt" });
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
  return { client, session, t, s };
}

// Subscribe to events on the Server object with `fields`; every event is printed (its
// values through `convert`, field names without their namespace) and the returned
// promise resolves with the first one `match` accepts, or fails after 30 s with
// `timeoutMessage`.
async function awaitServerEvent(session, fields, { convert, match, timeoutMessage }) {
  const subscription = await session.createSubscription2({
    requestedPublishingInterval: 100,
    requestedLifetimeCount: 1000,
    requestedMaxKeepAliveCount: 10,
    maxNotificationsPerPublish: 1000,
    publishingEnabled: true,
    priority: 10,
  });
  const monitored = await subscription.monitor(
    { nodeId: "i=2253", attributeId: AttributeIds.EventNotifier },
    { queueSize: 100, filter: constructEventFilter(fields), discardOldest: true },
    TimestampsToReturn.Neither,
  );
  const seen = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(timeoutMessage)), 30000);
    monitored.on("changed", (values) => {
      const event = {};
      fields.forEach((f, i) => {
        event[f.replace(/^\d+:/, "")] = convert(values[i].value);
      });
      say("event", event);
      if (match(event)) {
        clearTimeout(timer);
        resolve(event);
      }
    });
  });
  return { subscription, seen };
}

// End the subscription, the session and the connection.
async function close({ client, session }, subscription) {
  await subscription.terminate();
  await session.close();
  await client.disconnect();
}

// Run main; a failure is the summary line, and exit status 1.
function run(main) {
  main().catch((err) => {
    say("summary", { ok: false, error: String(err && err.stack ? err.stack : err) });
    process.exit(1);
  });
}

module.exports = { say, readConfig, openSession, awaitServerEvent, close, run };
