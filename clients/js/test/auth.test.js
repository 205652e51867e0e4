// JWT auth against a real standalone server (--jwt-secret): tokens are
// refreshed in place with the `refresh` frame (the connection outlives the
// first token), close 4001 gets a new token and resumes, a static token
// that expires stops the client, refreshed rooms claims drop rooms.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Switchboard, ForbiddenError, UnauthorizedError } from "../dist/index.js";
import { startSwitchboard, signJwt, nowSec, nextEvent, record, waitFor, assertIncreasing } from "./helpers.js";

const SECRET = "a-test-secret-of-32-bytes-length";
let server;
const clients = [];

function make(options) {
  const sb = new Switchboard({ urls: [server.ws], WebSocket, reconnect: { initialDelay: 50, maxDelay: 500 }, ...options });
  clients.push(sb);
  return sb;
}

const longToken = (sub, extra = {}) => signJwt({ sub, exp: nowSec() + 3600, ...extra }, SECRET);

before(async () => {
  server = await startSwitchboard("standalone", ["--jwt-secret", SECRET]);
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await server?.stop();
});

test("a provider token is refreshed in place: the connection outlives the first token", async () => {
  const issued = [];
  const provider = async () => {
    const token = signJwt({ sub: "refresher", exp: nowSec() + 3 }, SECRET);
    issued.push(token);
    return token;
  };
  const sb = make({ token: provider });
  const states = [];
  sb.on("state", (s, info) => states.push([s, info.closeCode]));
  const refreshed = [];
  sb.on("refreshed", (r) => refreshed.push(r));
  const errors = [];
  sb.on("error", (e) => errors.push(e));
  const room = sb.room("refresh-room");
  const got = record(room);
  await room.subscribe();
  const firstExp = JSON.parse(Buffer.from(issued[0].split(".")[1], "base64url")).exp;
  // Two refreshes take the connection past the first token's exp (+1 s).
  await waitFor(() => refreshed.length >= 2 && Date.now() > firstExp * 1000 + 1000, {
    what: "two refreshes and the first token's exp passed",
    timeout: 15_000,
    interval: 100,
  });
  assert.ok(refreshed.every((r) => r.transport === "websocket" && typeof r.exp === "number"));
  assert.ok(refreshed[1].exp >= refreshed[0].exp);
  assert.ok(refreshed[0].exp > firstExp - 1);
  // Still the first connection, and it works.
  const other = make({ token: longToken("other") });
  const ack = await other.room("refresh-room").publish({ text: "after exp" });
  await waitFor(() => got.some((e) => e.cursor === ack.cursor), { what: "message after the first exp" });
  assert.deepEqual(states, [["connecting", undefined], ["connected", undefined]], "never reconnected");
  assert.deepEqual(errors, []);
  assert.ok(issued.length >= 3);
});

test("close 4001 (token expired): a new token from the provider, then resume without loss", async () => {
  let calls = 0;
  const sb = make({
    token: () => {
      calls++;
      return signJwt({ sub: "expiring", exp: nowSec() + 2 }, SECRET);
    },
    refreshTokens: false,
  });
  const room = sb.room("expiry-room");
  const got = record(room);
  await room.subscribe();
  const expired = nextEvent(sb, "state", (s, info) => s === "connecting" && info.closeCode === 4001, 8_000);
  const publisher = make({ token: longToken("steady") });
  const acks = [];
  let stop = false;
  const loop = (async () => {
    while (!stop) {
      acks.push(await publisher.room("expiry-room").publish({ text: `m${acks.length}` }));
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  await expired;
  await nextEvent(sb, "state", (s) => s === "connected", 8_000);
  await new Promise((r) => setTimeout(r, 200));
  stop = true;
  await loop;
  await waitFor(() => acks.every((a) => got.some((e) => e.cursor === a.cursor)), { what: "all messages after the 4001" });
  const messages = got.filter((e) => e.type === "message");
  assert.deepEqual(
    messages.map((m) => m.text),
    acks.map((_, i) => `m${i}`),
    "each once, in order",
  );
  assertIncreasing(assert, got);
  assert.ok(calls >= 2, `the provider was asked again (${calls})`);
});

test("a static token that expires stops the client with an unauthorized error", async () => {
  const sb = make({ token: signJwt({ sub: "static", exp: nowSec() + 2 }, SECRET) });
  await sb.room("static-room").subscribe();
  const error = await nextEvent(sb, "error", () => true, 8_000);
  assert.ok(error instanceof UnauthorizedError, String(error));
  assert.equal(error.closeCode, 4001);
  await waitFor(() => sb.state === "disconnected", { what: "disconnected" });
  await assert.rejects(sb.room("static-room").publish("x"), (e) => e.code === "unauthorized");
});

test("rooms claims: forbidden rooms, and a refresh that no longer allows a room drops it", async () => {
  let n = 0;
  const sb = make({
    token: () => {
      n++;
      const rooms = n === 1 ? ["keep-*", "drop-*"] : ["keep-*"];
      return signJwt({ sub: "claims", exp: nowSec() + (n === 1 ? 3 : 3600), rooms }, SECRET);
    },
  });
  await assert.rejects(sb.room("secret").subscribe(), (e) => e instanceof ForbiddenError && e.room === "secret");
  const keep = sb.room("keep-1");
  const drop = sb.room("drop-1");
  await keep.subscribe();
  await drop.subscribe();
  const dropped = nextEvent(drop, "unsubscribed", () => true, 10_000);
  const dropError = nextEvent(drop, "error", () => true, 10_000);
  await nextEvent(sb, "refreshed", () => true, 10_000);
  const err = await dropError;
  assert.ok(err instanceof ForbiddenError);
  assert.equal(err.room, "drop-1");
  assert.equal((await dropped).error.code, "forbidden");
  assert.equal(drop.subscribed, false);
  assert.equal(keep.subscribed, true);
  const got = record(keep);
  const ack = await make({ token: longToken("w") }).room("keep-1").publish("still here");
  await waitFor(() => got.some((e) => e.cursor === ack.cursor), { what: "keep-1 still delivers" });
});

test("a refresh the server refuses is reported; the connection keeps its token", async () => {
  let n = 0;
  const sb = make({
    token: () => {
      n++;
      // The second token is for another user: the server refuses it.
      return signJwt({ sub: n === 1 ? "me" : "someone-else", exp: nowSec() + 3 }, SECRET);
    },
  });
  const states = [];
  sb.on("state", (s) => states.push(s));
  await sb.room("refuse-room").subscribe();
  const error = await nextEvent(sb, "error", () => true, 8_000);
  assert.ok(error instanceof UnauthorizedError, String(error));
  assert.match(error.message, /keep the user/);
  assert.deepEqual(states, ["connecting", "connected"]);
});

test("a token refused at connect: a provider is asked again; a static token stops", async () => {
  let n = 0;
  const sb = make({
    token: () => {
      n++;
      // The first token is already expired: the upgrade is refused with 401.
      return signJwt({ sub: "late", exp: nowSec() + (n === 1 ? -60 : 3600) }, SECRET);
    },
  });
  await sb.room("late-room").subscribe();
  assert.ok(n >= 2);
  assert.equal(sb.transport, "websocket");

  for (const transports of [["websocket"], ["sse"]]) {
    const stale = make({ token: signJwt({ sub: "stale", exp: nowSec() - 60 }, SECRET), transports });
    const error = await nextEvent(stale, "error", () => true, 8_000);
    assert.ok(error instanceof UnauthorizedError, `${transports}: ${error}`);
    assert.equal(error.status, 401);
    await waitFor(() => stale.state === "disconnected", { what: "disconnected" });
  }
});
