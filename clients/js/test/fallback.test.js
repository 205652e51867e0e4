// The SSE + HTTP fallback against a real standalone server: when the
// WebSocket cannot connect, the same room API receives over SSE and sends
// over the HTTP API, resumes after a cut from the last cursor
// (Last-Event-ID) exactly once, and refreshes tokens by reopening streams.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Switchboard } from "../dist/index.js";
import {
  startSwitchboard,
  TcpProxy,
  nextEvent,
  record,
  waitFor,
  signJwt,
  nowSec,
  assertIncreasing,
} from "./helpers.js";

const SECRET = "another-secret-32-bytes-long-ok!";
let server;
let jwtServer;
let proxy;
const clients = [];

/** A WebSocket that never connects (a proxy or firewall that blocks upgrades). */
class FailingWebSocket {
  static created = 0;
  constructor() {
    FailingWebSocket.created++;
    this.readyState = 0;
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    setTimeout(() => {
      this.readyState = 3;
      this.onerror?.({ message: "blocked" });
      this.onclose?.({ code: 1006, reason: "" });
    }, 5);
  }
  send() {
    throw new Error("not open");
  }
  close() {}
}

/** A WebSocket constructor that throws. */
class ThrowingWebSocket {
  constructor() {
    throw new Error("WebSocket is disabled here");
  }
}

function make(options) {
  const sb = new Switchboard({ reconnect: { initialDelay: 50, maxDelay: 300 }, ...options });
  clients.push(sb);
  return sb;
}

before(async () => {
  server = await startSwitchboard("standalone");
  jwtServer = await startSwitchboard("standalone", ["--jwt-secret", SECRET]);
  proxy = await new TcpProxy(server.port).start();
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await proxy?.close();
  await server?.stop();
  await jwtServer?.stop();
});

describe("SSE + HTTP fallback", () => {
  test("WebSocket blocked: receive over SSE, publish over HTTP, resume after a cut exactly once", async () => {
    const sb = make({ urls: [proxy.http], user: "ssefan", WebSocket: FailingWebSocket, fallbackAfter: 2 });
    const connected = nextEvent(sb, "state", (s, info) => s === "connected" && info.transport === "sse", 10_000);
    const room = sb.room("fallback");
    const got = record(room);
    const sub = await room.subscribe();
    await connected;
    assert.equal(sb.transport, "sse");
    assert.equal(sb.url, proxy.http);
    assert.equal(sub.recovered, true);
    assert.ok(FailingWebSocket.created >= 2, "WebSocket was tried first");

    const ws = make({ urls: [server.ws], user: "wsfan", WebSocket });
    const wsGot = record(ws.room("fallback"));
    await ws.room("fallback").subscribe();
    const acks = [];
    acks.push(await ws.room("fallback").publish("from ws"));
    // Publish over HTTP, with the automatic id.
    const own = await room.publish({ text: "from sse" });
    assert.equal(own.duplicate, false);
    acks.push(own);
    await waitFor(() => acks.every((a) => got.some((e) => e.cursor === a.cursor)), { what: "both over SSE" });
    await waitFor(() => wsGot.some((e) => e.cursor === own.cursor), { what: "the HTTP publish on the WebSocket" });
    const message = got.find((e) => e.cursor === own.cursor);
    assert.equal(message.type, "message");
    assert.equal(message.user, "ssefan");
    assert.equal(message.id, own.id);

    // History and presence over HTTP.
    const { events } = await room.history({ limit: 10 });
    assert.deepEqual(
      events.filter((e) => e.type === "message").map((e) => e.text),
      ["from ws", "from sse"],
    );
    await waitFor(
      async () => {
        const { users } = await room.presence();
        return users.includes("ssefan") && users.includes("wsfan");
      },
      { what: "presence over HTTP" },
    );

    // A cut: the stream breaks; what is published meanwhile arrives once after the resume.
    proxy.refusing = true;
    const down = nextEvent(sb, "state", (s) => s === "connecting", 10_000);
    proxy.cut();
    await down;
    for (let i = 0; i < 5; i++) acks.push(await ws.room("fallback").publish(`gap-${i}`));
    const queued = [0, 1, 2].map((i) => room.publish(`queued-${i}`));
    assert.equal(sb.pendingPublishes, 3);
    const up = nextEvent(sb, "state", (s, info) => s === "connected" && info.transport === "sse", 15_000);
    proxy.refusing = false;
    await up;
    acks.push(...(await Promise.all(queued)));
    acks.push(await ws.room("fallback").publish("after"));
    await waitFor(() => acks.every((a) => got.some((e) => e.cursor === a.cursor)), {
      what: "every message over SSE after the resume",
      timeout: 15_000,
    });
    const texts = got.filter((e) => e.type === "message").map((e) => e.text);
    assert.deepEqual(texts, [
      "from ws",
      "from sse",
      "gap-0",
      "gap-1",
      "gap-2",
      "gap-3",
      "gap-4",
      "queued-0",
      "queued-1",
      "queued-2",
      "after",
    ]);
    assertIncreasing(assert, got, "SSE events");
  });

  test("a throwing WebSocket constructor falls back too; bad rooms are refused over HTTP", async () => {
    const sb = make({ urls: [server.http], user: "thrower", WebSocket: ThrowingWebSocket, fallbackAfter: 1 });
    const room = sb.room("fallback-2");
    const got = record(room);
    await room.subscribe();
    assert.equal(sb.transport, "sse");
    const ack = await room.publish("hi");
    await waitFor(() => got.some((e) => e.cursor === ack.cursor), { what: "own message" });
    await assert.rejects(sb.room("bad.room").subscribe(), (e) => e.code === "invalid_room" && e.status === 400);
    await assert.rejects(sb.room("bad.room").publish("x"), (e) => e.code === "invalid_room" && e.status === 400);
    await assert.rejects(room.publish(""), (e) => e.code === "bad_frame");
    await assert.rejects(room.history({ before: "garbage" }), (e) => e.code === "bad_frame");
    assert.equal(sb.state, "connected");
  });

  test("SSE with tokens (a ws:// URL, transports: [sse]): refreshed by reopening streams, exactly once", async () => {
    const issued = [];
    const sb = make({
      urls: [jwtServer.ws],
      transports: ["sse"],
      token: async () => {
        const token = signJwt({ sub: "sse-jwt", exp: nowSec() + 3 }, SECRET);
        issued.push(token);
        return token;
      },
    });
    const states = [];
    sb.on("state", (s) => states.push(s));
    const refreshed = [];
    sb.on("refreshed", (r) => refreshed.push(r));
    const room = sb.room("sse-jwt-room");
    const got = record(room);
    await room.subscribe();
    assert.equal(sb.url, jwtServer.http, "the HTTP base was derived from the ws:// URL");
    const firstExp = JSON.parse(Buffer.from(issued[0].split(".")[1], "base64url")).exp;
    const pub = make({ urls: [jwtServer.ws], WebSocket, token: signJwt({ sub: "p", exp: nowSec() + 3600 }, SECRET) });
    const acks = [];
    let stop = false;
    const loop = (async () => {
      while (!stop) {
        acks.push(await pub.room("sse-jwt-room").publish(`t${acks.length}`));
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    await waitFor(() => refreshed.length >= 2 && Date.now() > firstExp * 1000 + 1000, {
      what: "two SSE refreshes past the first exp",
      timeout: 15_000,
      interval: 100,
    });
    stop = true;
    await loop;
    // Our own publish goes over HTTP with the current token.
    acks.push(await room.publish("own"));
    await waitFor(() => acks.every((a) => got.some((e) => e.cursor === a.cursor)), { what: "all delivered" });
    const texts = got.filter((e) => e.type === "message").map((e) => e.text);
    assert.deepEqual(texts, [...acks.slice(0, -1).map((_, i) => `t${i}`), "own"], "each once, in order, across stream reopenings");
    assertIncreasing(assert, got);
    assert.ok(refreshed.every((r) => r.transport === "sse"));
    assert.deepEqual(states, ["connecting", "connected"], "refreshing did not drop the connection");
  });
});
