// Switchboard's gRPC `Connect` stream (SPEC §5) from a NestJS-style service.
//
// `SwitchboardChatService` is written the way a NestJS provider is: a class
// with `onModuleInit` / `onModuleDestroy` lifecycle hooks that owns one
// bidirectional `switchboard.v1.Chat/Connect` stream, with promise-returning
// methods for the rest of the application. In a Nest app, decorate it with
// `@Injectable()` and list it in a module's `providers`; Nest calls the hooks.
// Here it is plain JavaScript (@grpc/grpc-js + @grpc/proto-loader, the
// protos loaded at run time from proto/, nothing generated), so it runs
// without the framework:
//
//   const chat = new SwitchboardChatService({ target: "localhost:50051", user: "svc" });
//   await chat.onModuleInit();
//   chat.on("event", (e) => console.log(e.user, e.text));  // every room subscribed
//   const { cursor, recovered } = await chat.subscribe("lobby");          // or { since }
//   const { cursor: at, duplicate } = await chat.publish("lobby", "hi");  // acked, with an id
//   await chat.history("lobby", { limit: 10 }); await chat.presence("lobby");
//   await chat.onModuleDestroy();
//
// Run as a script: node nest_style_grpc.js --target localhost:50051 --room lobby
//   --user svc [--since CURSOR] [--publish TEXT]... [--count N]
// prints `subscribed`, `ack` and `event` JSON lines; exits after N messages.

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const here = path.dirname(fileURLToPath(import.meta.url));
export const PROTO_DIR = process.env.SWITCHBOARD_PROTO_DIR ?? path.resolve(here, "../../proto");

/** The `switchboard.v1` package and the seed `ChatService`, from proto/. */
export function loadProtos(protoDir = PROTO_DIR) {
  const definition = protoLoader.loadSync(["switchboard/v1/chat.proto", "switchboard/v1/seed_chat.proto"], {
    includeDirs: [protoDir],
    longs: String, // int64 / uint64 (ts_unix_ms, prev_offset) as strings
    enums: String, // EventType as "EVENT_TYPE_MESSAGE"
    defaults: true,
    oneofs: true, // frame.frame names the field that is set
  });
  return grpc.loadPackageDefinition(definition);
}

/** The request a reply frame answers. */
const REQUEST_OF = { subscribed: "subscribe", unsubscribed: "unsubscribe", history: "history", presence: "presence" };

export class SwitchboardError extends Error {
  constructor(code, message, id) {
    super(`${code}: ${message}`);
    this.code = code;
    this.id = id;
  }
}

// @Injectable()
export class SwitchboardChatService extends EventEmitter {
  /** @param {{target: string, user?: string, token?: string, protoDir?: string}} options */
  constructor({ target, user, token, protoDir } = {}) {
    super();
    this.target = target;
    this.metadata = new grpc.Metadata();
    if (token) this.metadata.set("authorization", `Bearer ${token}`);
    else if (user) this.metadata.set("x-user", user);
    this.protos = loadProtos(protoDir);
    this.idPrefix = randomUUID().slice(0, 8);
    this.seq = 0;
    this.publishes = new Map(); // id -> {resolve, reject}
    this.requests = []; // subscribe/history/presence, answered in order
    this.stream = null;
  }

  /** Opens the `Connect` stream (Nest calls this once the module is ready). */
  async onModuleInit() {
    const { Chat } = this.protos.switchboard.v1;
    this.client = new Chat(this.target, grpc.credentials.createInsecure());
    await new Promise((resolve, reject) =>
      this.client.waitForReady(Date.now() + 10_000, (err) => (err ? reject(err) : resolve())),
    );
    this.stream = this.client.Connect(this.metadata);
    this.stream.on("data", (frame) => this.#onFrame(frame));
    this.stream.on("error", (err) => this.#fail(err));
    this.stream.on("end", () => this.#fail(new SwitchboardError("unavailable", "stream ended")));
  }

  /** Ends the stream (Nest calls this on shutdown). */
  async onModuleDestroy() {
    if (!this.stream) return;
    const stream = this.stream;
    this.stream = null;
    stream.end();
    stream.cancel();
    this.client.close();
    this.#fail(new SwitchboardError("closed", "service destroyed"));
  }

  /** Subscribes; with `since` the missed events are emitted first. */
  subscribe(room, { since } = {}) {
    return this.#request("subscribe", room, { subscribe: { room, since: since ?? "" } });
  }

  unsubscribe(room) {
    return this.#request("unsubscribe", room, { unsubscribe: { room } });
  }

  /** Publishes with an id (given, or `<prefix>-<n>`), resolved by its ack:
   * `{room, cursor, duplicate, id}`; a retry with the same id is stored once. */
  publish(room, text, { id } = {}) {
    const publishId = id ?? `${this.idPrefix}-${++this.seq}`;
    return new Promise((resolve, reject) => {
      this.publishes.set(publishId, { resolve, reject });
      this.#write({ publish: { room, text, id: publishId } }, reject);
    });
  }

  /** One page of history, oldest first: `{room, events}`. */
  history(room, { before, after, limit } = {}) {
    return this.#request("history", room, {
      history: { room, before: before ?? "", after: after ?? "", limit: limit ?? 0 },
    });
  }

  /** `{room, users}` subscribed now. */
  presence(room) {
    return this.#request("presence", room, { presence: { room } });
  }

  #request(kind, room, frame) {
    return new Promise((resolve, reject) => {
      this.requests.push({ kind, room, resolve, reject });
      this.#write(frame, reject);
    });
  }

  #write(frame, reject) {
    if (!this.stream) return reject(new SwitchboardError("closed", "not connected: call onModuleInit()"));
    this.stream.write(frame);
  }

  #answer(kind, value) {
    const index = this.requests.findIndex((r) => r.kind === kind && (!value.room || r.room === value.room));
    if (index < 0) return false;
    const [request] = this.requests.splice(index, 1);
    request.resolve(value);
    return true;
  }

  #onFrame(frame) {
    const body = frame[frame.frame];
    switch (frame.frame) {
      case "event":
        this.emit("event", body);
        break;
      case "ack": {
        const pending = this.publishes.get(body.id);
        this.publishes.delete(body.id);
        pending?.resolve(body);
        break;
      }
      case "subscribed":
      case "unsubscribed":
      case "history":
      case "presence":
        if (!this.#answer(REQUEST_OF[frame.frame], body)) {
          this.emit(frame.frame, body); // e.g. a room dropped by the server
        }
        break;
      case "error": {
        const err = new SwitchboardError(body.code, body.message, body.id || undefined);
        const pending = body.id ? this.publishes.get(body.id) : this.requests.shift();
        if (body.id) this.publishes.delete(body.id);
        if (pending) pending.reject(err);
        else if (this.listenerCount("error") > 0) this.emit("error", err);
        break;
      }
      default:
        break; // pong, refreshed
    }
  }

  #fail(err) {
    const waiting = [...this.publishes.values(), ...this.requests];
    this.publishes.clear();
    this.requests = [];
    for (const { reject } of waiting) reject(err);
    if (this.stream !== null && this.listenerCount("end") > 0) this.emit("end", err);
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      target: { type: "string", default: "localhost:50051" },
      room: { type: "string", default: "lobby" },
      user: { type: "string" },
      token: { type: "string", default: process.env.SWITCHBOARD_TOKEN },
      since: { type: "string" },
      publish: { type: "string", multiple: true, default: [] },
      count: { type: "string" },
    },
  });
  const count = values.count === undefined ? values.publish.length : Number(values.count);
  const print = (frame, body) => console.log(JSON.stringify({ frame, ...body }));
  const chat = new SwitchboardChatService(values);
  await chat.onModuleInit();
  let received = 0;
  const done = new Promise((resolve, reject) => {
    if (count === 0) resolve();
    chat.on("end", reject);
    chat.on("event", (event) => {
      print("event", event);
      if (event.type === "EVENT_TYPE_MESSAGE" && ++received >= count) resolve();
    });
  });
  print("subscribed", await chat.subscribe(values.room, { since: values.since }));
  for (const text of values.publish) print("ack", await chat.publish(values.room, text));
  await done;
  await chat.onModuleDestroy();
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    console.error(`[nest_style_grpc] ${err.message}`);
    process.exit(1);
  });
}
