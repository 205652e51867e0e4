// Close codes and connection faults, with a TCP proxy between the client
// and a real standalone server: 4003 stops the client; 1012, 1013 and 4008
// reconnect and resume; a publish whose ack was lost is retried and
// answered `duplicate: true` with the original cursor; a silent
// connection is detected by ping and replaced.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Switchboard, DisconnectedError } from "../dist/index.js";
import { startSwitchboard, TcpProxy, nextEvent, record, waitFor, assertIncreasing } from "./helpers.js";

let server;
let proxy;
const clients = [];

function viaProxy(user, extra = {}) {
  const sb = new Switchboard({
    urls: [proxy.ws],
    user,
    WebSocket,
    transports: ["websocket"],
    reconnect: { initialDelay: 50, maxDelay: 300 },
    ...extra,
  });
  clients.push(sb);
  return sb;
}

function direct(user) {
  const sb = new Switchboard({ urls: [server.ws], user, WebSocket });
  clients.push(sb);
  return sb;
}

before(async () => {
  server = await startSwitchboard("standalone");
  proxy = await new TcpProxy(server.port).start();
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await proxy?.close();
  await server?.stop();
});

test("4003 stops: disconnected, error surfaced, pending publishes rejected, no reconnect", async () => {
  const sb = viaProxy("kicked");
  await sb.room("kick-room").subscribe();
  const acceptedBefore = proxy.accepted;
  proxy.blackhole = true; // the next publish is stored but its ack never arrives
  const pending = sb.room("kick-room").publish("unacked");
  await waitFor(async () => (await direct("kick-observer").room("kick-room").history({ limit: 5 })).events.some((e) => e.text === "unacked"), {
    what: "the publish stored",
  });
  const error = nextEvent(sb, "error");
  const down = nextEvent(sb, "state", (s) => s === "disconnected");
  proxy.injectClose(4003, "kicked by an operator");
  proxy.blackhole = false;
  const err = await error;
  assert.ok(err instanceof DisconnectedError, String(err));
  assert.equal(err.code, "disconnected");
  assert.equal(err.closeCode, 4003);
  await down;
  await assert.rejects(pending, (e) => e.code === "disconnected" && e.room === "kick-room");
  await assert.rejects(sb.room("kick-room").publish("after"), (e) => e.code === "disconnected");
  // Nothing reconnects (a bounded look: several backoff periods).
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal(proxy.accepted, acceptedBefore, "no new connection after 4003");
  assert.equal(sb.state, "disconnected");
  // The application may start again explicitly.
  const up = nextEvent(sb, "state", (s) => s === "connected");
  sb.connect();
  await up;
  await sb.room("kick-room").subscribe();
});

for (const code of [1012, 1013, 4008]) {
  test(`close ${code}: reconnect and resume from the last cursor`, async () => {
    const room = `resume-${code}`;
    const sb = viaProxy(`r${code}`);
    const got = record(sb.room(room));
    await sb.room(room).subscribe();
    const pub = direct(`p${code}`);
    const acks = [await pub.room(room).publish("before")];
    await waitFor(() => got.some((e) => e.cursor === acks[0].cursor), { what: "first message" });
    proxy.refusing = true;
    const closed = nextEvent(sb, "state", (s, info) => s === "connecting" && info.closeCode === code);
    proxy.injectClose(code, "test");
    await closed;
    for (let i = 0; i < 5; i++) acks.push(await pub.room(room).publish(`gap-${i}`));
    const back = nextEvent(sb, "state", (s) => s === "connected");
    proxy.refusing = false;
    await back;
    acks.push(await pub.room(room).publish("after"));
    await waitFor(() => acks.every((a) => got.some((e) => e.cursor === a.cursor)), { what: "every message" });
    const texts = got.filter((e) => e.type === "message").map((e) => e.text);
    assert.deepEqual(texts, ["before", "gap-0", "gap-1", "gap-2", "gap-3", "gap-4", "after"]);
    assertIncreasing(assert, got);
  });
}

test("a publish whose ack was lost is retried and answered duplicate with the original cursor", async () => {
  const sb = viaProxy("retrier");
  const room = sb.room("dup-room");
  const got = record(room);
  await room.subscribe();
  const observer = direct("dup-observer");
  const seen = record(observer.room("dup-room"));
  await observer.room("dup-room").subscribe();
  proxy.blackhole = true;
  const publish = room.publish({ text: "exactly once" });
  await waitFor(() => seen.some((e) => e.text === "exactly once"), { what: "stored while the ack is lost" });
  const original = seen.find((e) => e.text === "exactly once");
  assert.equal(sb.pendingPublishes, 1);
  proxy.cut();
  proxy.blackhole = false;
  const ack = await publish;
  assert.equal(ack.duplicate, true, "the retry was recognised by its id");
  assert.equal(ack.cursor, original.cursor);
  assert.equal(ack.id, original.id);
  const marker = await observer.room("dup-room").publish("marker");
  await waitFor(() => got.some((e) => e.cursor === marker.cursor), { what: "marker" });
  assert.equal(got.filter((e) => e.text === "exactly once").length, 1, "delivered once to the publisher's own subscription");
  assert.equal(seen.filter((e) => e.text === "exactly once").length, 1);
});

test("a silent connection is detected by ping and replaced", async () => {
  const sb = viaProxy("pinger", { pingInterval: 300, pongTimeout: 300 });
  const got = record(sb.room("ping-room"));
  await sb.room("ping-room").subscribe();
  proxy.blackhole = true;
  const dropped = await nextEvent(sb, "state", (s) => s === "connecting", 5_000);
  assert.ok(dropped);
  proxy.blackhole = false;
  await nextEvent(sb, "state", (s) => s === "connected", 5_000);
  const ack = await direct("ping-pub").room("ping-room").publish("alive");
  await waitFor(() => got.some((e) => e.cursor === ack.cursor), { what: "delivery after the ping timeout" });
});

test("close 1009 (frame over the server's limit): that publish is refused, the client reconnects", async () => {
  const small = await startSwitchboard("standalone", ["--max-frame-bytes", "2000", "--max-text-bytes", "1000"]);
  try {
    const sb = new Switchboard({ urls: [small.ws], user: "big", WebSocket, reconnect: { initialDelay: 50, maxDelay: 200 } });
    clients.push(sb);
    const got = record(sb.room("big-room"));
    await sb.room("big-room").subscribe();
    const closed = nextEvent(sb, "state", (s, info) => s === "connecting" && info.closeCode === 1009);
    await assert.rejects(sb.room("big-room").publish("z".repeat(3000)), (e) => e.code === "too_large" && e.closeCode === 1009);
    await closed;
    const ack = await sb.room("big-room").publish("small again");
    await waitFor(() => got.some((e) => e.cursor === ack.cursor), { what: "delivery after 1009" });
    assert.equal(got.filter((e) => e.type === "message").length, 1);
  } finally {
    await small.stop();
  }
});
