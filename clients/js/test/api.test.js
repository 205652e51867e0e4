// The room API against a real standalone server over WebSocket: publish and
// delivery, join/leave, history paging, presence, idempotent ids, and the
// errors of bad input (from the server and from the client's own checks).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import {
  Switchboard,
  SwitchboardError,
  InvalidRoomError,
  TooLargeError,
  BadFrameError,
} from "../dist/index.js";
import { startSwitchboard, nextEvent, record, waitFor, assertIncreasing } from "./helpers.js";

let server;
const clients = [];

function client(user, extra = {}) {
  const sb = new Switchboard({ urls: [server.ws], user, WebSocket, transports: ["websocket"], ...extra });
  clients.push(sb);
  return sb;
}

before(async () => {
  server = await startSwitchboard("standalone", ["--max-text-bytes", "100"]);
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await server?.stop();
});

describe("room API over WebSocket", () => {
  test("subscribe, publish, receive with an automatic id", async () => {
    const alice = client("alice");
    const states = [];
    alice.on("state", (s) => states.push(s));
    const bob = client("bob");
    const room = alice.room("api-basic");
    assert.equal(alice.room("api-basic"), room, "sb.room() returns one object per name");
    const got = record(room);
    const sub = await room.subscribe();
    assert.equal(sub.recovered, true);
    assert.match(sub.cursor, /^[A-Za-z0-9]+:\d+$/);
    assert.equal(room.subscribed, true);
    const message = nextEvent(room, "message", (e) => e.text === "hello");
    const ack = await bob.room("api-basic").publish({ text: "hello" });
    assert.equal(ack.duplicate, false);
    assert.equal(ack.room, "api-basic");
    assert.ok(ack.id.length > 0, "an id was generated");
    const e = await message;
    assert.equal(e.type, "message");
    assert.equal(e.cursor, ack.cursor);
    assert.equal(e.id, ack.id);
    assert.equal(e.user, "bob");
    assert.equal(e.room, "api-basic");
    assert.match(e.ts, /^\d{4}-\d\d-\d\dT/);
    assert.equal(room.cursor, ack.cursor, "room.cursor is the last delivered cursor");
    assert.deepEqual(states, ["connecting", "connected"]);
    assert.equal(alice.transport, "websocket");
    // Publishing as a string works too; ids differ per publish.
    const ack2 = await bob.room("api-basic").publish("again");
    assert.notEqual(ack2.id, ack.id);
    await waitFor(() => got.some((x) => x.cursor === ack2.cursor), { what: "second message" });
    assertIncreasing(assert, got);
  });

  test("join and leave events", async () => {
    const alice = client("carol");
    const bob = client("dave");
    const room = alice.room("api-presence-events");
    await room.subscribe();
    const joined = nextEvent(room, "join", (e) => e.user === "dave");
    const bobRoom = bob.room("api-presence-events");
    await bobRoom.subscribe();
    const join = await joined;
    assert.equal(join.type, "join");
    assert.equal(join.room, "api-presence-events");
    const left = nextEvent(room, "leave", (e) => e.user === "dave");
    const unsubscribed = nextEvent(bobRoom, "unsubscribed");
    await bobRoom.unsubscribe();
    await unsubscribed;
    assert.equal(bobRoom.subscribed, false);
    const leave = await left;
    assert.ok(Number(leave.cursor.split(":")[1]) > Number(join.cursor.split(":")[1]));
  });

  test("presence lists the users subscribed", async () => {
    const a = client("erin");
    const b = client("frank");
    await a.room("api-presence").subscribe();
    await b.room("api-presence").subscribe();
    const users = await waitFor(
      async () => {
        const { users, room } = await a.room("api-presence").presence();
        assert.equal(room, "api-presence");
        return users.includes("erin") && users.includes("frank") ? users : null;
      },
      { what: "presence of erin and frank" },
    );
    assert.ok(Array.isArray(users));
  });

  test("history pages backwards, oldest first within a page", async () => {
    const pub = client("hist");
    const room = pub.room("api-history");
    const cursors = [];
    for (let i = 0; i < 25; i++) cursors.push((await room.publish({ text: `h${i}` })).cursor);
    const pages = [];
    for await (const page of room.historyPages({ limit: 10 })) pages.push(page);
    assert.deepEqual(
      pages.map((p) => p.length),
      [10, 10, 5],
    );
    const all = pages.reverse().flat();
    assert.deepEqual(
      all.map((e) => e.cursor),
      cursors,
    );
    assert.deepEqual(
      all.map((e) => e.text),
      cursors.map((_, i) => `h${i}`),
    );
    assert.ok(all.every((e) => e.type === "message" && e.user === "hist"));
    const { events } = await room.history({ after: cursors[4], limit: 3 });
    assert.deepEqual(
      events.map((e) => e.cursor),
      cursors.slice(5, 8),
    );
    const older = await room.history({ before: cursors[2] });
    assert.deepEqual(
      older.events.map((e) => e.cursor),
      cursors.slice(0, 2),
    );
  });

  test("an explicit id is idempotent: the retry is a duplicate with the original cursor", async () => {
    const sub = client("idem-sub");
    const pub = client("idem-pub");
    const got = record(sub.room("api-idem"));
    await sub.room("api-idem").subscribe();
    const first = await pub.room("api-idem").publish({ text: "once", id: "fixed-id-1" });
    const second = await pub.room("api-idem").publish({ text: "once", id: "fixed-id-1" });
    assert.equal(first.duplicate, false);
    assert.equal(second.duplicate, true);
    assert.equal(second.cursor, first.cursor);
    const marker = await pub.room("api-idem").publish({ text: "marker" });
    await waitFor(() => got.some((e) => e.cursor === marker.cursor), { what: "marker" });
    assert.equal(got.filter((e) => e.type === "message" && e.id === "fixed-id-1").length, 1);
  });

  test("bad input is refused with typed errors, and the connection stays usable", async () => {
    const sb = client("bad", { maxFrameBytes: 1000 });
    const states = [];
    sb.on("state", (s) => states.push(s));
    const badRoom = sb.room("bad.room");
    const roomError = nextEvent(badRoom, "error");
    await assert.rejects(badRoom.subscribe(), (err) => {
      assert.ok(err instanceof InvalidRoomError, String(err));
      assert.ok(err instanceof SwitchboardError);
      assert.equal(err.code, "invalid_room");
      assert.equal(err.room, "bad.room");
      return true;
    });
    assert.equal((await roomError).code, "invalid_room");
    await assert.rejects(sb.room("a b").publish({ text: "x" }), (err) => err instanceof InvalidRoomError && err.code === "invalid_room");
    await assert.rejects(sb.room("ok").publish({ text: "x".repeat(101) }), (err) => {
      assert.ok(err instanceof TooLargeError, String(err));
      assert.equal(err.code, "too_large");
      assert.equal(err.status, undefined, "from the server over WebSocket");
      assert.ok(err.id, "the publish id is on the error");
      return true;
    });
    await assert.rejects(sb.room("ok").publish({ text: "" }), (err) => err instanceof SwitchboardError && err.code === "bad_frame");
    await assert.rejects(sb.room("ok").history({ before: "garbage" }), (err) => err instanceof BadFrameError && err.code === "bad_frame");
    await assert.rejects(sb.room("ok").history({ before: "x:007" }), (err) => err.code === "bad_frame");
    // Refused by the client before sending: a frame over maxFrameBytes, nothing to send.
    await assert.rejects(sb.room("ok").publish({ text: "y".repeat(2000) }), (err) => err instanceof TooLargeError);
    await assert.rejects(sb.room("ok").publish({}), (err) => err instanceof BadFrameError);
    await assert.rejects(sb.room("ok").publish({ text: 42 }), (err) => err instanceof BadFrameError);
    const ok = await sb.room("ok").publish({ text: "still fine" });
    assert.equal(ok.duplicate, false);
    assert.deepEqual(states, ["connecting", "connected"], "no error closed the connection");
    assert.equal(sb.pendingPublishes, 0);
  });

  test("subscribing again (or from a state listener) does not subscribe twice", async () => {
    const sb = client("eager", { autoConnect: false });
    const early = sb.room("api-eager-1");
    const late = sb.room("api-eager-2");
    const errors = [];
    for (const r of [early, late]) r.on("error", (e) => errors.push(e));
    const first = early.subscribe(); // before any connection
    const fromListener = new Promise((resolve, reject) => {
      sb.on("state", (s) => {
        if (s === "connected") Promise.all([early.subscribe(), late.subscribe()]).then(resolve, reject);
      });
    });
    sb.connect();
    await first;
    await fromListener;
    assert.equal(early.subscribed, true);
    assert.equal(late.subscribed, true);
    await early.subscribe();
    const got = record(early);
    const ack = await early.publish("once");
    await waitFor(() => got.some((e) => e.cursor === ack.cursor), { what: "own message" });
    assert.equal(got.filter((e) => e.type === "message").length, 1);
    assert.deepEqual(errors, []);
  });

  test("urls are rotated: a dead first URL, then the live one (a base http:// URL)", async () => {
    const sb = client("rotator", { urls: ["ws://127.0.0.1:9/ws", server.http], reconnect: { initialDelay: 20, maxDelay: 100 } });
    const room = sb.room("api-rotate");
    await room.subscribe();
    assert.equal(sb.url, server.ws, "connected to the ws endpoint derived from the base URL");
    const got = record(room);
    const ack = await room.publish("rotated");
    await waitFor(() => got.some((e) => e.cursor === ack.cursor), { what: "own message" });
  });

  test("requests while the server is unreachable time out, bounded", async () => {
    const sb = new Switchboard({
      urls: ["ws://127.0.0.1:9/ws"],
      WebSocket,
      transports: ["websocket"],
      requestTimeout: 400,
      reconnect: { initialDelay: 50, maxDelay: 200 },
    });
    clients.push(sb);
    const started = Date.now();
    await assert.rejects(sb.room("x").presence(), (err) => err.code === "timeout");
    assert.ok(Date.now() - started < 3000);
    await sb.close();
    assert.equal(sb.state, "disconnected");
    await assert.rejects(sb.room("x").publish("after close"), (err) => err.code === "closed");
  });
});
