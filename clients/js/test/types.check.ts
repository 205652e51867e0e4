// Compiled with `tsc --noEmit -p test` by npm test: the published
// declarations type the documented surface (a wrong type fails the build).
import {
  Switchboard,
  SwitchboardError,
  QueueFullError,
  type MessageEvent,
  type PresenceEvent,
  type RecoveredEvent,
  type State,
  type ErrorCode,
  type PublishResult,
  type HistoryResult,
  type PresenceResult,
  type SubscribeResult,
} from "../dist/index.js";

const sb = new Switchboard({ urls: ["ws://a/ws", "http://b"], token: async () => "jwt", maxPendingPublishes: 10 });
const anon = new Switchboard({ urls: "http://c", user: "alice", transports: ["sse"], fallbackUrls: ["http://d"] });
const room = sb.room("lobby", { since: "e:1" });
room.on("message", (e: MessageEvent) => {
  const text: string | undefined = e.text;
  const cursor: string = e.cursor;
  void text;
  void cursor;
});
room.on("join", (e: PresenceEvent) => void e.user);
room.on("leave", (e) => {
  const t: "join" | "leave" = e.type;
  void t;
});
room.on("recovered", (e: RecoveredEvent) => {
  const r: false = e.recovered;
  void r;
});
room.on("error", (e) => {
  const code: ErrorCode = e.code;
  void code;
});
sb.on("state", (s: State, info) => void [s, info.transport, info.closeCode]);
sb.on("error", (e: SwitchboardError) => void (e instanceof QueueFullError));
sb.on("refreshed", ({ exp }) => void exp);

async function use(): Promise<void> {
  const sub: SubscribeResult = await room.subscribe();
  const ack: PublishResult = await room.publish({ text: "hi", data: { any: ["json"] } });
  const ack2: PublishResult = await room.publish("hi");
  const page: HistoryResult = await room.history({ before: ack.cursor, limit: 10 });
  for await (const events of room.historyPages({ limit: 5 })) void events[0]?.cursor;
  const who: PresenceResult = await room.presence();
  await room.unsubscribe();
  await sb.close();
  await anon.close();
  void [sub.recovered, ack2.duplicate, page.events, who.users];
}
void use;

// @ts-expect-error: unknown events are type errors
room.on("mesage", () => {});
// @ts-expect-error: options are typed
new Switchboard({ urls: ["ws://a/ws"], transports: ["carrier-pigeon"] });
