// A browser-less script on the project's own SDK, `@switchboard/client`
// (clients/js): join a room, say something, print what the room says.
//
// The SDK does the hard parts: it reconnects with backoff and jitter across
// `--url`s, resumes the room from its last cursor (no gap, no duplicate),
// retries unacknowledged publishes with the same id, and falls back to SSE +
// HTTP when WebSocket is blocked. Node 20 has no global WebSocket, so the
// `ws` package's is passed in.
//
//   node sdk_script.js --url ws://localhost:8080/ws --room lobby --user bot \
//     [--url ws://other:8080/ws] [--since CURSOR] [--send TEXT]... \
//     [--count N] [--history N] [--transport websocket|sse]
//
// Prints JSON lines: `subscribed`, `ack` (per --send), `history` (with
// --history N), `presence`, then each `message` / `join` / `leave`; exits 0
// after N messages (--count; default: run until Ctrl-C), 1 on a fatal error.

import { Switchboard } from "@switchboard/client";
import { parseArgs } from "node:util";
import WebSocket from "ws";

const { values } = parseArgs({
  options: {
    url: { type: "string", multiple: true, default: ["ws://localhost:8080/ws"] },
    room: { type: "string", default: "lobby" },
    user: { type: "string" },
    token: { type: "string", default: process.env.SWITCHBOARD_TOKEN },
    since: { type: "string" },
    send: { type: "string", multiple: true, default: [] },
    count: { type: "string" },
    history: { type: "string" },
    transport: { type: "string" },
  },
});

const print = (event, body) => console.log(JSON.stringify({ event, ...body }));
const note = (text) => console.error(`[sdk_script] ${text}`);

const sb = new Switchboard({
  urls: values.url,
  user: values.user,
  token: values.token,
  WebSocket: globalThis.WebSocket ?? WebSocket,
  transports: values.transport ? [values.transport] : undefined,
  reconnect: { initialDelay: 100, maxDelay: 2000 },
});
sb.on("state", (state, info) => note(`${state} ${info.transport ?? ""} ${info.closeCode ?? ""}`.trim()));
sb.on("error", (err) => note(`error ${err.code}: ${err.message}`));

const room = sb.room(values.room, values.since ? { since: values.since } : undefined);
const count = values.count === undefined ? Infinity : Number(values.count);
let messages = 0;
let finish;
const finished = new Promise((resolve) => (finish = resolve));
room.on("message", (e) => {
  print("message", e);
  if (++messages >= count) finish();
});
room.on("join", (e) => print("join", e));
room.on("leave", (e) => print("leave", e));
room.on("recovered", (e) => note(`missed events of ${e.room}; live again from ${e.cursor}`));
room.on("subscribed", (e) => e.resumed && note(`resumed ${e.room} at ${e.cursor} over ${e.transport}`));

try {
  const { cursor, recovered } = await room.subscribe();
  print("subscribed", { room: room.name, cursor, recovered });
  for (const text of values.send) print("ack", await room.publish({ text }));
  if (values.history) print("history", await room.history({ limit: Number(values.history) }));
  print("presence", await room.presence());
  if (count === 0) finish();
  process.once("SIGINT", finish);
  await finished;
  await sb.close();
} catch (err) {
  note(`${err.code ?? "error"}: ${err.message}`);
  await sb.close();
  process.exit(1);
}
