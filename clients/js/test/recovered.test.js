// recovered: false is explicit: with a server that keeps only 5 events per
// room, a client that missed more resumes with a `recovered` event
// {room, recovered: false, cursor} and continues live; a cursor of another
// epoch, or older than retention, given to sb.room(name, { since }) says
// the same.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Switchboard } from "../dist/index.js";
import { startSwitchboard, TcpProxy, nextEvent, record, waitFor, offset } from "./helpers.js";

let server;
let proxy;
const clients = [];

function make(urls, user, extra = {}) {
  const sb = new Switchboard({ urls, user, WebSocket, reconnect: { initialDelay: 50, maxDelay: 200 }, ...extra });
  clients.push(sb);
  return sb;
}

before(async () => {
  server = await startSwitchboard("standalone", ["--retention-count", "5"]);
  proxy = await new TcpProxy(server.port).start();
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await proxy?.close();
  await server?.stop();
});

test("a gap longer than history is surfaced as recovered: false, then live delivery goes on", async () => {
  const sb = make([proxy.ws], "gappy", { transports: ["websocket"] });
  const room = sb.room("short");
  const got = record(room);
  const recovered = [];
  room.on("recovered", (e) => recovered.push(e));
  await room.subscribe();
  const pub = make([server.ws], "pub");
  const first = await pub.room("short").publish("seen");
  await waitFor(() => got.some((e) => e.cursor === first.cursor), { what: "first" });

  proxy.refusing = true;
  const down = nextEvent(sb, "state", (s) => s === "connecting");
  proxy.cut();
  await down;
  const missed = [];
  for (let i = 0; i < 20; i++) missed.push(await pub.room("short").publish(`missed-${i}`));
  const event = nextEvent(room, "recovered");
  proxy.refusing = false;
  const e = await event;
  assert.deepEqual(e, { room: "short", recovered: false, cursor: missed.at(-1).cursor });
  // Live from the head on (its own join may already have followed).
  assert.ok(offset(room.cursor) >= offset(missed.at(-1).cursor));
  const live = await pub.room("short").publish("live");
  await waitFor(() => got.some((x) => x.cursor === live.cursor), { what: "live after the gap" });
  assert.deepEqual(
    got.filter((x) => x.type === "message").map((x) => x.text),
    ["seen", "live"],
    "nothing of the lost range is delivered, nothing twice",
  );
  assert.equal(recovered.length, 1);
});

test("sb.room(name, { since }) resumes from a cursor; too old or foreign says recovered: false", async () => {
  const pub = make([server.ws], "pub2");
  const cursors = [];
  for (let i = 0; i < 10; i++) cursors.push((await pub.room("since-room").publish(`s${i}`)).cursor);

  // Inside retention: replayed from there.
  const ok = make([server.ws], "ok");
  const okRoom = ok.room("since-room", { since: cursors[6] });
  const okGot = record(okRoom);
  const okJoined = nextEvent(okRoom, "join", (e) => e.user === "ok");
  const okResult = await okRoom.subscribe();
  assert.equal(okResult.recovered, true);
  await okJoined; // its own join is stored after the replay
  assert.deepEqual(
    okGot.filter((e) => e.type === "message").map((e) => e.text),
    ["s7", "s8", "s9"],
  );

  for (const [name, since] of [
    ["old", cursors[0]],
    ["foreign", "otherepoch:3"],
  ]) {
    const head = (await pub.room("since-room").history({ limit: 1 })).events[0].cursor;
    const sb = make([server.ws], name);
    const room = sb.room("since-room", { since });
    const event = nextEvent(room, "recovered");
    const joined = nextEvent(room, "join", (e) => e.user === name);
    const result = await room.subscribe();
    assert.equal(result.recovered, false, name);
    assert.equal(result.cursor, head, name);
    assert.deepEqual(await event, { room: "since-room", recovered: false, cursor: head });
    await joined;
  }
});
