// express_backend.js as a real process publishing through a real
// Switchboard; what reaches the room's WebSocket subscribers is checked.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { example, freshRoom, history, lossyHttpProxy, publish, startSwitchboard, wsSubscriber } from "./helpers.js";

async function startBackend(switchboardUrl, room) {
  const app = example("express", "express_backend.js", [], {
    env: { SWITCHBOARD_URL: switchboardUrl, SWITCHBOARD_ROOM: room, PORT: "0" },
  });
  const { listening } = await app.waitJson((l) => l.listening, "listening");
  return { app, url: listening };
}

const order = (url, body, headers = {}) =>
  fetch(`${url}/orders`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(30_000),
  }).then(async (r) => ({ status: r.status, body: await r.json() }));

describe("express_backend", () => {
  let server, proxy;
  const cleanups = [];
  before(async () => {
    server = await startSwitchboard();
    proxy = await lossyHttpProxy(server.http);
  });
  after(async () => {
    for (const fn of cleanups.reverse()) await fn();
    await proxy?.close();
    await server?.stop();
  });

  async function setup() {
    const room = freshRoom();
    const backend = await startBackend(proxy.url, room);
    const watcher = await wsSubscriber(server.ws, room);
    cleanups.push(() => backend.app.kill(), () => watcher.close());
    return { room, url: backend.url, watcher };
  }

  test("an order retried by the client is announced once", async () => {
    const { room, url, watcher } = await setup();
    const first = await order(url, { order_id: "o-1", item: "widget", quantity: 2 });
    assert.equal(first.status, 201);
    assert.equal(first.body.duplicate, false);
    const again = await order(url, { order_id: "o-1", item: "widget", quantity: 2 });
    assert.equal(again.status, 201);
    assert.deepEqual(again.body, { ...first.body, duplicate: true });
    await order(url, { order_id: "o-2", item: "gadget", quantity: 1 }); // the barrier
    await watcher.waitText("order o-2: 1 x gadget");
    const messages = watcher.messages();
    assert.deepEqual(messages.map((m) => m.text), ["order o-1: 2 x widget", "order o-2: 1 x gadget"]);
    assert.equal(messages[0].id, "order-o-1");
    assert.equal(messages[0].user, "orders-service");
    assert.equal(messages[0].cursor, first.body.cursor);
    const stored = (await history(server.http, room)).filter((e) => e.type === "message");
    assert.equal(stored.length, 2);
  });

  test("a reply lost between the backend and Switchboard is retried, stored once", async () => {
    const { url, watcher } = await setup();
    const before = proxy.forwardedPosts;
    proxy.loseReplies(1);
    const response = await order(url, { order_id: "o-3", item: "sprocket", quantity: 5 });
    assert.equal(response.status, 201);
    assert.equal(response.body.duplicate, true, "the retry found the stored publish");
    assert.equal(proxy.forwardedPosts - before, 2);
    await order(url, { order_id: "o-4", item: "barrier", quantity: 1 });
    await watcher.waitText("order o-4: 1 x barrier");
    assert.deepEqual(watcher.messages().map((m) => m.text), ["order o-3: 5 x sprocket", "order o-4: 1 x barrier"]);
    assert.equal(watcher.messages()[0].cursor, response.body.cursor);
  });

  test("the Idempotency-Key header names the order", async () => {
    const { url } = await setup();
    const body = { item: "gizmo", quantity: 3 };
    const first = await order(url, body, { "idempotency-key": "k-9" });
    const again = await order(url, body, { "idempotency-key": "k-9" });
    assert.equal(first.body.order_id, "k-9");
    assert.deepEqual([first.body.duplicate, again.body.duplicate], [false, true]);
    assert.equal(first.body.cursor, again.body.cursor);
  });

  test("an invalid order is refused and not announced", async () => {
    const { room, url, watcher } = await setup();
    assert.equal((await order(url, { order_id: "o-5", item: "widget", quantity: 0 })).status, 422);
    assert.equal((await order(url, { order_id: "bad id!", item: "widget", quantity: 1 })).status, 422);
    assert.equal((await order(url, { order_id: "o-6", quantity: 1 })).status, 422);
    await publish(server.http, room, "barrier");
    await watcher.waitText("barrier");
    assert.deepEqual(watcher.messages().map((m) => m.text), ["barrier"]);
  });

  test("an unreachable Switchboard is a 503 after bounded retries", async () => {
    const { app, url } = await startBackend("http://127.0.0.1:9", freshRoom());
    cleanups.push(() => app.kill());
    const response = await order(url, { order_id: "o-7", item: "widget", quantity: 1 });
    assert.equal(response.status, 503);
    assert.equal(response.body.error.switchboard, "unreachable");
  });
});
