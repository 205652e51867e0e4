// Distributed mode: nats-server (JetStream), one core, two ws-gateways.
// The subscriber's gateway is killed (SIGKILL) while publishes are in
// flight: the client resumes on the other gateway, every acknowledged
// publish is delivered exactly once and in order, its own unacknowledged
// publishes are retried until acknowledged (the core de-duplicates by id).
// Then the other gateway shuts down gracefully (SIGTERM: close 1012) and
// the client resumes on the first one, restarted on its old port.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Switchboard } from "../dist/index.js";
import { startNats, startSwitchboard, nextEvent, record, waitFor, offset, assertIncreasing } from "./helpers.js";

const ROOM = "failover";
const services = [];
const clients = [];
const debugLog = [];

after(async () => {
  if (process.env.SB_DEBUG) process.stderr.write(debugLog.join("\n") + "\n");
  await Promise.all(clients.map((c) => c.close()));
  for (const s of services.reverse()) await Promise.resolve(s.stop?.()).catch(() => {});
});

test("a killed gateway: the client resumes on the other one exactly once, publishes retried", async () => {
  const nats = await startNats();
  services.push(nats);
  const core = await startSwitchboard("core", ["--nats-url", nats.url]);
  services.push(core);
  let gw1 = await startSwitchboard("ws-gateway", ["--nats-url", nats.url]);
  services.push(gw1);
  const gw2 = await startSwitchboard("ws-gateway", ["--nats-url", nats.url, "--shutdown-grace", "3s"]);
  services.push(gw2);
  await Promise.all([core.waitReady(), gw1.waitReady(), gw2.waitReady()]);

  const reconnect = { initialDelay: 100, maxDelay: 1000 };
  const sub = new Switchboard({ urls: [gw1.ws, gw2.ws], user: "sub", WebSocket, reconnect, debug: (m) => debugLog.push(`${Date.now() % 100000} ${m}`) });
  const pub = new Switchboard({ urls: [gw2.ws, gw1.ws], user: "pub", WebSocket, reconnect });
  clients.push(sub, pub);
  const stateLog = [];
  sub.on("state", (state, info) => stateLog.push({ state, ...info }));
  const room = sub.room(ROOM);
  const got = record(room);
  const subscribedEvents = [];
  room.on("subscribed", (e) => subscribedEvents.push(e));
  const lost = [];
  room.on("recovered", (e) => lost.push(e));
  const start = await room.subscribe();
  assert.equal(sub.url, gw1.ws, "the subscriber starts on the first URL");

  const acked = []; // every acknowledged publish, in acknowledgement order
  const publishSeq = async (client, prefix, n) => {
    for (let i = 0; i < n; i++) acked.push(await client.room(ROOM).publish({ text: `${prefix}-${i}` }));
  };

  await publishSeq(pub, "before", 15);
  await waitFor(() => got.some((e) => e.cursor === acked.at(-1).cursor), { what: "phase 1 delivered" });

  // The subscriber's own publishes, in flight when its gateway dies.
  const inFlight = Array.from({ length: 10 }, (_, i) => sub.room(ROOM).publish({ text: `sub-${i}` }));
  await gw1.stop("SIGKILL");
  const reconnected = nextEvent(sub, "state", (s) => s === "connected", 20_000);
  await publishSeq(pub, "during", 15);
  await reconnected;
  assert.equal(sub.url, gw2.ws, "resumed on the other gateway");
  const subAcks = await Promise.all(inFlight);
  acked.push(...subAcks);
  await publishSeq(pub, "after", 10);
  await waitFor(() => acked.every((a) => got.some((e) => e.cursor === a.cursor)), {
    what: "every acknowledged publish delivered",
    timeout: 20_000,
  });

  // Phase 2: the second gateway shuts down gracefully (1012); the first is back on its port.
  const port1 = gw1.port;
  gw1 = await startSwitchboard("ws-gateway", ["--nats-url", nats.url], { httpPort: port1 });
  services.push(gw1);
  await gw1.waitReady();
  // SPEC §8 says 1012; the server sometimes exits before writing it (see
  // the report: its native WebSocket tasks are not awaited by the graceful
  // shutdown), so an abnormal 1006 is accepted here. 1012 itself is tested
  // deterministically in closecodes.test.js.
  const closedBySigterm = nextEvent(sub, "state", (s, info) => s === "connecting" && [1012, 1006].includes(info.closeCode), 20_000);
  const back = nextEvent(sub, "state", (s) => s === "connected", 20_000);
  const inFlight2 = Array.from({ length: 5 }, (_, i) => sub.room(ROOM).publish({ text: `sub2-${i}` }));
  await gw2.stop("SIGTERM");
  const [, sigtermInfo] = await closedBySigterm;
  if (sigtermInfo.closeCode !== 1012) process.stderr.write(`# failover: SIGTERM closed the WebSocket with ${sigtermInfo.closeCode}, not 1012\n`);
  await back;
  assert.equal(sub.url, gw1.ws, "resumed on the restarted gateway");
  acked.push(...(await Promise.all(inFlight2)));
  await publishSeq(pub, "end", 5);
  await waitFor(() => acked.every((a) => got.some((e) => e.cursor === a.cursor)), {
    what: "every acknowledged publish delivered after 1012",
    timeout: 20_000,
  });

  // Exactly once, in order.
  assertIncreasing(assert, got, "subscriber events");
  const messages = got.filter((e) => e.type === "message");
  const counts = new Map();
  for (const m of messages) counts.set(m.cursor, (counts.get(m.cursor) ?? 0) + 1);
  for (const a of acked) assert.equal(counts.get(a.cursor), 1, `acked ${a.id} at ${a.cursor} delivered once`);
  const texts = messages.map((m) => m.text);
  for (const prefix of ["sub", "sub2"]) {
    const n = prefix === "sub" ? 10 : 5;
    for (let i = 0; i < n; i++) assert.equal(texts.filter((t) => t === `${prefix}-${i}`).length, 1, `${prefix}-${i} stored once`);
  }
  const pubTexts = messages.filter((m) => m.user === "pub").map((m) => m.text);
  const expected = [
    ...Array.from({ length: 15 }, (_, i) => `before-${i}`),
    ...Array.from({ length: 15 }, (_, i) => `during-${i}`),
    ...Array.from({ length: 10 }, (_, i) => `after-${i}`),
    ...Array.from({ length: 5 }, (_, i) => `end-${i}`),
  ];
  assert.deepEqual(pubTexts, expected, "the publisher's messages, each once, in its order");

  // No gap: what the subscriber saw is the room log after its first cursor.
  const last = Math.max(...acked.map((a) => offset(a.cursor)));
  const { events: logged } = await pub.room(ROOM).history({ after: start.cursor, limit: 1000 });
  const expectedCursors = logged.map((e) => e.cursor).filter((c) => offset(c) <= last);
  assert.deepEqual(
    got.map((e) => e.cursor).filter((c) => offset(c) <= last),
    expectedCursors,
  );
  assert.deepEqual(lost, [], "history covered both gaps");
  assert.equal(subscribedEvents.length, 3);
  assert.deepEqual(
    subscribedEvents.map((e) => [e.resumed, e.recovered]),
    [
      [false, true],
      [true, true],
      [true, true],
    ],
  );
  const duplicates = subAcks.filter((a) => a.duplicate).length;
  process.stderr.write(`# failover: ${acked.length} acked, ${duplicates} of the in-flight publishes answered duplicate:true\n`);
  assert.ok(
    stateLog.some((s) => s.state === "connecting" && s.closeCode === 1006),
    `the kill was an abnormal close: ${JSON.stringify(stateLog)}`,
  );
});
