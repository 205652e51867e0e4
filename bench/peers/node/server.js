// Benchmark peer: the plain Node answer to "broadcast to a room", in one
// process, for `switchboard bench --protocol raw` (README, Benchmarking).
//
//   POST /pub/:room          body broadcast verbatim to the room; 200 after
//                            it was handed to every subscriber's socket
//   GET  /sub/:room          WebSocket (npm `ws`): one text frame per message
//   GET  /sub/:room          SSE (Accept: text/event-stream): one `data:` event
//
// It holds no history and checks nothing: it is the floor a chat server is
// compared with. Usage: `node server.js [port] [host]` (port 0 picks a free
// one); it prints `listening <port>` on stdout once it accepts connections,
// which the test harness and scripts/bench.sh wait for.

"use strict";

const http = require("node:http");
const { WebSocketServer } = require("ws");

const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
const host = process.argv[3] ?? process.env.HOST ?? "127.0.0.1";

/** room name -> { ws: Set<WebSocket>, sse: Set<ServerResponse> } */
const rooms = new Map();

function room(name) {
  let r = rooms.get(name);
  if (!r) {
    r = { ws: new Set(), sse: new Set() };
    rooms.set(name, r);
  }
  return r;
}

function forget(name) {
  const r = rooms.get(name);
  if (r && r.ws.size === 0 && r.sse.size === 0) rooms.delete(name);
}

/** `/pub/<room>` or `/sub/<room>` -> [kind, room]; anything else -> null. */
function route(url) {
  const path = url.split("?", 1)[0];
  const m = /^\/(pub|sub)\/([A-Za-z0-9_.:-]{1,128})$/.exec(path);
  return m ? [m[1], m[2]] : null;
}

// Bodies larger than this are refused: the bench sends chat-sized payloads.
const MAX_BODY = 64 * 1024;

function publish(req, res, name) {
  const chunks = [];
  let size = 0;
  req.on("data", (c) => {
    size += c.length;
    if (size > MAX_BODY) {
      res.writeHead(413).end();
      req.destroy();
      return;
    }
    chunks.push(c);
  });
  req.on("end", () => {
    if (res.writableEnded) return;
    const body = Buffer.concat(chunks);
    const r = rooms.get(name);
    let delivered = 0;
    if (r) {
      // Encode once: the same buffers go to every subscriber.
      const event = Buffer.concat([Buffer.from("data: "), body, Buffer.from("\n\n")]);
      for (const ws of r.ws) {
        ws.send(body, { binary: false });
        delivered++;
      }
      for (const sse of r.sse) {
        sse.write(event);
        delivered++;
      }
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(`{"subscribers":${delivered}}`);
  });
}

function subscribeSse(req, res, name) {
  const r = room(name);
  // Registered before the headers go out: a client that saw the 200 is in
  // the room.
  r.sse.add(res);
  res.writeHead(200, {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    connection: "keep-alive",
  });
  res.flushHeaders();
  req.socket.setNoDelay(true);
  const drop = () => {
    r.sse.delete(res);
    forget(name);
  };
  req.on("close", drop);
  res.on("error", drop);
}

const server = http.createServer((req, res) => {
  const hit = route(req.url ?? "");
  if (hit && hit[0] === "pub" && req.method === "POST") return publish(req, res, hit[1]);
  if (hit && hit[0] === "sub" && req.method === "GET") return subscribeSse(req, res, hit[1]);
  res.writeHead(404).end();
});
server.keepAliveTimeout = 60_000;

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });

server.on("upgrade", (req, socket, head) => {
  const hit = route(req.url ?? "");
  if (!hit || hit[0] !== "sub") {
    socket.end("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    // Called in the same tick the 101 was written: the subscriber is in the
    // room before the client can act on the upgrade.
    const r = room(hit[1]);
    r.ws.add(ws);
    ws.on("close", () => {
      r.ws.delete(ws);
      forget(hit[1]);
    });
    ws.on("error", () => ws.terminate());
  });
});

server.listen(port, host, () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => process.exit(0));
}
