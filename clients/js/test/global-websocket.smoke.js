// Run with `node --experimental-websocket` (npm test does): the client
// uses Node's global WebSocket (undici) when no constructor is passed —
// delivery, a reconnect with resume after close 1012, and 4003 stopping.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { Switchboard } from "../dist/index.js";
import { startSwitchboard, TcpProxy, nextEvent, record, waitFor } from "./helpers.js";

let server;
let proxy;
const clients = [];

before(async () => {
  assert.equal(typeof globalThis.WebSocket, "function", "run this file with node --experimental-websocket");
  server = await startSwitchboard("standalone");
  proxy = await new TcpProxy(server.port).start();
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await proxy?.close();
  await server?.stop();
});

test("the global WebSocket: deliver, resume after 1012, stop on 4003", async () => {
  const sb = new Switchboard({ urls: [proxy.http], user: "global", transports: ["websocket"], reconnect: { initialDelay: 50, maxDelay: 200 } });
  const pub = new Switchboard({ urls: [server.http], user: "gpub" });
  clients.push(sb, pub);
  const room = sb.room("global-room");
  const got = record(room);
  await room.subscribe();
  assert.equal(sb.transport, "websocket");
  assert.equal(sb.url, proxy.ws);
  const acks = [await pub.room("global-room").publish("one")];
  await waitFor(() => got.some((e) => e.cursor === acks[0].cursor), { what: "one" });

  proxy.refusing = true;
  const closed = nextEvent(sb, "state", (s, info) => s === "connecting" && info.closeCode === 1012);
  proxy.injectClose(1012, "restart");
  await closed;
  acks.push(await pub.room("global-room").publish("two"));
  const back = nextEvent(sb, "state", (s) => s === "connected");
  proxy.refusing = false;
  await back;
  acks.push(await sb.room("global-room").publish("three"));
  await waitFor(() => acks.every((a) => got.some((e) => e.cursor === a.cursor)), { what: "all" });
  assert.deepEqual(
    got.filter((e) => e.type === "message").map((e) => e.text),
    ["one", "two", "three"],
  );

  const error = nextEvent(sb, "error");
  proxy.injectClose(4003, "bye");
  assert.equal((await error).closeCode, 4003);
  await waitFor(() => sb.state === "disconnected", { what: "disconnected" });
});
