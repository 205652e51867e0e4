// sdk_script.js (the @switchboard/client SDK from clients/js, on the `ws`
// package) as a real process against a real Switchboard: publishing and
// receiving, resuming after its connection is cut with nothing lost or
// repeated, and the same over the SSE + HTTP transport.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { example, freshRoom, history, publish, startSwitchboard, tcpProxy, waitFor, wsSubscriber } from "./helpers.js";

describe("sdk_script", () => {
  let server;
  const cleanups = [];
  before(async () => {
    server = await startSwitchboard();
  });
  after(async () => {
    for (const fn of cleanups.reverse()) await fn();
    await server?.stop();
  });

  const messages = (script) => script.jsonLines().filter((l) => l.event === "message");

  test("publishes, reads history and presence, receives the room", async () => {
    const room = freshRoom();
    const watcher = await wsSubscriber(server.ws, room);
    cleanups.push(() => watcher.close());
    await publish(server.http, room, "earlier");
    const script = example("sdk", "sdk_script.js", [
      "--url", server.ws, "--room", room, "--user", "bot", "--send", "hi", "--send", "there",
      "--history", "10", "--count", "3",
    ]);
    cleanups.push(() => script.kill());
    await script.waitJson((l) => l.event === "presence", "presence");
    await publish(server.http, room, "from http", { user: "dave" });
    assert.equal((await script.waitExit()).code, 0, script.logs());

    const acks = script.jsonLines().filter((l) => l.event === "ack");
    assert.deepEqual(acks.map((a) => a.duplicate), [false, false]);
    assert.ok(acks.every((a) => a.id), "every publish carries an automatic id");
    assert.deepEqual(messages(script).map((m) => [m.text, m.user]), [["hi", "bot"], ["there", "bot"], ["from http", "dave"]]);
    const [page] = script.jsonLines().filter((l) => l.event === "history");
    assert.deepEqual(page.events.filter((e) => e.type === "message").map((e) => e.text), ["earlier", "hi", "there"]);
    const [presence] = script.jsonLines().filter((l) => l.event === "presence");
    assert.ok(presence.users.includes("bot") && presence.users.includes("watcher"));
    await watcher.waitText("there");
    assert.deepEqual(watcher.messages().map((m) => m.text).slice(0, 3), ["earlier", "hi", "there"]);
  });

  for (const transport of ["websocket", "sse"]) {
    test(`resumes after its connection is cut (${transport})`, async () => {
      const room = freshRoom();
      const proxy = await tcpProxy(server.httpAddr);
      cleanups.push(() => proxy.close());
      const script = example(`sdk-${transport}`, "sdk_script.js", [
        "--url", `http://${proxy.addr}`, "--room", room, "--user", "bot", "--transport", transport, "--count", "6",
      ]);
      cleanups.push(() => script.kill());
      await script.waitJson((l) => l.event === "presence", "subscribed");
      for (const n of [1, 2]) await publish(server.http, room, `m${n}`, { id: `m${n}` });
      await script.waitJson((l) => l.event === "message" && l.text === "m2", "m2");

      proxy.refusing = true;
      proxy.cut();
      await script.waitStderr((l) => l.includes("connecting"), "the SDK noticing");
      for (const n of [3, 4]) await publish(server.http, room, `m${n}`, { id: `m${n}` });
      proxy.refusing = false;
      await waitFor(() => messages(script).length >= 4, "the replay of m3, m4", { timeout: 30_000 });
      for (const n of [5, 6]) await publish(server.http, room, `m${n}`, { id: `m${n}` });
      assert.equal((await script.waitExit(30_000)).code, 0, script.logs());

      assert.deepEqual(messages(script).map((m) => m.text), ["m1", "m2", "m3", "m4", "m5", "m6"]);
      const stored = (await history(server.http, room)).filter((e) => e.type === "message");
      assert.deepEqual(messages(script).map((m) => m.cursor), stored.map((e) => e.cursor));
      assert.ok(script.stderr.some((l) => l.includes(`resumed ${room}`)), script.logs());
      assert.ok(proxy.accepted >= 2);
    });
  }
});
