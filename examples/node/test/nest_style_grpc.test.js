// nest_style_grpc.js: the NestJS-style service's bidirectional Connect
// stream against a real Switchboard (imported, as a Nest app would), and
// the file run as a script; checked against a WebSocket subscriber and the
// HTTP API of the same room.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { SwitchboardChatService } from "../nest_style_grpc.js";
import { example, freshRoom, history, publish, startSwitchboard, waitFor, wsSubscriber } from "./helpers.js";

describe("nest_style_grpc", () => {
  let server;
  const cleanups = [];
  before(async () => {
    server = await startSwitchboard();
  });
  after(async () => {
    for (const fn of cleanups.reverse()) await fn();
    await server?.stop();
  });

  async function service(user) {
    const chat = new SwitchboardChatService({ target: server.grpcAddr, user });
    await chat.onModuleInit();
    cleanups.push(() => chat.onModuleDestroy());
    const events = [];
    chat.on("event", (e) => events.push(e));
    return { chat, events, messages: () => events.filter((e) => e.type === "EVENT_TYPE_MESSAGE") };
  }

  test("subscribe, publish and receive on one Connect stream", async () => {
    const room = freshRoom();
    const watcher = await wsSubscriber(server.ws, room);
    cleanups.push(() => watcher.close());
    const { chat, messages } = await service("svc");

    const subscribed = await chat.subscribe(room);
    assert.equal(subscribed.room, room);
    assert.equal(subscribed.recovered, true);
    const one = await chat.publish(room, "one", { id: "svc-1" });
    const two = await chat.publish(room, "two");
    assert.deepEqual([one.id, one.duplicate, two.duplicate], ["svc-1", false, false]);
    await publish(server.http, room, "from http", { user: "dave" });

    await waitFor(() => messages().length === 3, "three messages on the stream");
    assert.deepEqual(
      messages().map((m) => [m.text, m.user]),
      [["one", "svc"], ["two", "svc"], ["from http", "dave"]],
    );
    assert.deepEqual(messages().slice(0, 2).map((m) => m.cursor), [one.cursor, two.cursor]);
    assert.equal(typeof messages()[0].tsUnixMs, "string");
    // Every transport sees the same events in the same order.
    await watcher.waitText("from http");
    assert.deepEqual(
      watcher.messages().map((m) => [m.cursor, m.text]),
      messages().map((m) => [m.cursor, m.text]),
    );

    // History and presence ride the same stream.
    const page = await chat.history(room, { limit: 10 });
    assert.deepEqual(page.events.filter((e) => e.type === "EVENT_TYPE_MESSAGE").map((e) => e.text), ["one", "two", "from http"]);
    const { users } = await chat.presence(room);
    assert.deepEqual([...users].sort(), ["svc", "watcher"]);
  });

  test("a second service resumes after a cursor, and a retried id is a duplicate", async () => {
    const room = freshRoom();
    const acks = [];
    for (let n = 1; n <= 4; n++) acks.push(await publish(server.http, room, `e${n}`, { id: `e${n}` }));
    const { chat, messages } = await service("svc2");
    const subscribed = await chat.subscribe(room, { since: acks[1].cursor });
    assert.equal(subscribed.recovered, true);
    await waitFor(() => messages().length === 2, "the replay");
    assert.deepEqual(messages().map((m) => [m.text, m.cursor]), [["e3", acks[2].cursor], ["e4", acks[3].cursor]]);

    const retry = await chat.publish(room, "e4 again", { id: "e4" });
    assert.equal(retry.duplicate, true);
    assert.equal(retry.cursor, acks[3].cursor);
    assert.equal((await history(server.http, room)).filter((e) => e.type === "message").length, 4);
  });

  test("refusals reject the call they answer; the stream goes on", async () => {
    const { chat } = await service("svc3");
    await assert.rejects(chat.subscribe("no.dots"), { code: "invalid_room" });
    await assert.rejects(chat.publish("no.dots", "x"), { code: "invalid_room" });
    const room = freshRoom();
    const ok = await chat.subscribe(room);
    assert.equal(ok.room, room);
  });

  test("run as a script", async () => {
    const room = freshRoom();
    const script = example("nest-script", "nest_style_grpc.js", [
      "--target", server.grpcAddr, "--room", room, "--user", "cli", "--publish", "hello", "--count", "2",
    ]);
    cleanups.push(() => script.kill());
    await script.waitJson((l) => l.frame === "ack", "ack");
    await publish(server.http, room, "world");
    assert.equal((await script.waitExit()).code, 0, script.logs());
    const texts = script.jsonLines().filter((l) => l.frame === "event" && l.type === "EVENT_TYPE_MESSAGE").map((l) => l.text);
    assert.deepEqual(texts, ["hello", "world"]);
  });
});
