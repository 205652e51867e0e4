// The bounded queue of unacknowledged publishes: while the client cannot
// reach the server, publishes wait (up to maxPendingPublishes); one more is
// refused at once with queue_full; after the reconnect the queued ones are
// stored and delivered exactly once, in order.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Switchboard, QueueFullError } from "../dist/index.js";
import { startSwitchboard, TcpProxy, nextEvent, record, waitFor, assertIncreasing } from "./helpers.js";

let server;
let proxy;
const clients = [];

before(async () => {
  server = await startSwitchboard("standalone");
  proxy = await new TcpProxy(server.port).start();
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await proxy?.close();
  await server?.stop();
});

test("a full publish queue refuses at once; the queued publishes are delivered once after reconnect", async () => {
  const sb = new Switchboard({
    urls: [proxy.ws],
    user: "queuer",
    WebSocket,
    transports: ["websocket"],
    maxPendingPublishes: 5,
    reconnect: { initialDelay: 50, maxDelay: 200 },
  });
  const observer = new Switchboard({ urls: [server.ws], user: "observer", WebSocket });
  clients.push(sb, observer);
  const own = record(sb.room("queue-room"));
  await sb.room("queue-room").subscribe();
  const seen = record(observer.room("queue-room"));
  await observer.room("queue-room").subscribe();

  proxy.refusing = true;
  const down = nextEvent(sb, "state", (s) => s === "connecting");
  proxy.cut();
  await down;
  const queued = Array.from({ length: 5 }, (_, i) => sb.room("queue-room").publish({ text: `q${i}` }));
  assert.equal(sb.pendingPublishes, 5);
  const started = Date.now();
  await assert.rejects(sb.room("queue-room").publish({ text: "overflow" }), (err) => {
    assert.ok(err instanceof QueueFullError, String(err));
    assert.equal(err.code, "queue_full");
    return true;
  });
  assert.ok(Date.now() - started < 100, "refused at once, not after a timeout");
  assert.equal(sb.pendingPublishes, 5, "the refused publish did not grow the queue");
  assert.equal(sb.state, "connecting");

  proxy.refusing = false;
  const acks = await Promise.all(queued);
  assert.equal(sb.pendingPublishes, 0);
  assert.ok(acks.every((a) => a.duplicate === false));
  const marker = await observer.room("queue-room").publish("marker");
  await waitFor(() => [own, seen].every((list) => list.some((e) => e.cursor === marker.cursor)), { what: "marker on both" });
  for (const [name, list] of [["observer", seen], ["publisher", own]]) {
    const texts = list.filter((e) => e.type === "message").map((e) => e.text);
    assert.deepEqual(texts, ["q0", "q1", "q2", "q3", "q4", "marker"], `${name}: each queued publish once, in order`);
    assertIncreasing(assert, list, name);
  }
  assert.deepEqual(
    acks.map((a) => a.cursor),
    seen.filter((e) => e.type === "message" && e.text.startsWith("q")).map((e) => e.cursor),
  );
  // The queue has room again.
  await sb.room("queue-room").publish("room again");
});
