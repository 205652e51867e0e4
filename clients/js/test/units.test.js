// Pure pieces, no server: endpoint derivation, the SSE parser, cursor
// order, JWT exp decoding, error classes, option checks.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Switchboard,
  endpointOf,
  jwtExp,
  errorFromCode,
  SwitchboardError,
  RateLimitedError,
  UnavailableError,
  NotSubscribedError,
  SERVER_ERROR_CODES,
} from "../dist/index.js";
import { SseParser } from "../dist/sse.js";
import { isAfter } from "../dist/cursor.js";
import { signJwt } from "./helpers.js";

test("endpoints are derived from ws:// or http:// URLs of the same host", () => {
  assert.deepEqual(endpointOf("ws://a:8080/ws"), { input: "ws://a:8080/ws", ws: "ws://a:8080/ws", http: "http://a:8080" });
  assert.deepEqual(endpointOf("wss://a/ws/"), { input: "wss://a/ws/", ws: "wss://a/ws", http: "https://a" });
  assert.deepEqual(endpointOf("http://b:1"), { input: "http://b:1", ws: "ws://b:1/ws", http: "http://b:1" });
  assert.deepEqual(endpointOf("https://b/"), { input: "https://b/", ws: "wss://b/ws", http: "https://b" });
  assert.deepEqual(endpointOf("https://b/sb"), { input: "https://b/sb", ws: "wss://b/sb/ws", http: "https://b/sb" });
  assert.deepEqual(endpointOf("ws://c/sb/ws"), { input: "ws://c/sb/ws", ws: "ws://c/sb/ws", http: "http://c/sb" });
  assert.throws(() => endpointOf("ftp://x"), TypeError);
  assert.throws(() => endpointOf("not a url"), TypeError);
});

test("the SSE parser handles CRLF, split chunks, comments, multi-line data, ids", () => {
  const out = [];
  const p = new SseParser((event, data, id) => out.push({ event, data, id }));
  p.push("retry: 2000\n\n: ping\n\nid: e:1\nevent: mess");
  p.push("age\ndata: {\"a\":1}\n\n");
  p.push("id: e:2\r\nevent: join\r\ndata: x\r\ndata: y\r");
  p.push("\n\r\n");
  p.push("data: no event name\n\n");
  assert.deepEqual(out, [
    { event: "message", data: '{"a":1}', id: "e:1" },
    { event: "join", data: "x\ny", id: "e:2" },
    { event: "message", data: "no event name", id: "e:2" },
  ]);
});

test("cursor order: same epoch by offset, another epoch is new", () => {
  assert.equal(isAfter("e:2", "e:1"), true);
  assert.equal(isAfter("e:1", "e:1"), false);
  assert.equal(isAfter("e:10", "e:9"), true, "numeric, not lexicographic");
  assert.equal(isAfter("e:1", "e:9"), false);
  assert.equal(isAfter("f:1", "e:9"), true);
  assert.equal(isAfter("e:1", undefined), true);
});

test("jwtExp reads exp without verifying", () => {
  assert.equal(jwtExp(signJwt({ sub: "u", exp: 1234567890 }, "k")), 1234567890);
  assert.equal(jwtExp(signJwt({ sub: "ü-unicode", exp: 42 }, "k")), 42);
  assert.equal(jwtExp("garbage"), undefined);
  assert.equal(jwtExp("a.b.c"), undefined);
  assert.equal(jwtExp(signJwt({ sub: "u" }, "k")), undefined);
});

test("every server error code has its class; unknown codes stay SwitchboardErrors", () => {
  for (const code of SERVER_ERROR_CODES) {
    const err = errorFromCode(code, "m", { room: "r" });
    assert.ok(err instanceof SwitchboardError);
    assert.notEqual(err.constructor, SwitchboardError, code);
    assert.equal(err.code, code);
    assert.equal(err.room, "r");
  }
  assert.ok(errorFromCode("rate_limited", "m") instanceof RateLimitedError);
  assert.ok(errorFromCode("unavailable", "m") instanceof UnavailableError);
  assert.ok(errorFromCode("not_subscribed", "m") instanceof NotSubscribedError);
  const unknown = errorFromCode("brand_new", "m");
  assert.equal(unknown.constructor, SwitchboardError);
  assert.equal(unknown.code, "brand_new");
});

test("options are checked", () => {
  assert.throws(() => new Switchboard({ urls: [] }), TypeError);
  assert.throws(() => new Switchboard({ urls: ["ws://a/ws"], transports: ["carrier-pigeon"] }), TypeError);
  assert.throws(() => new Switchboard({ urls: ["ws://a/ws"], maxPendingPublishes: -1 }), TypeError);
  assert.throws(() => new Switchboard({ urls: ["ws://a/ws"], token: 42 }), TypeError);
  const sb = new Switchboard({ urls: "ws://a/ws", autoConnect: false });
  assert.equal(sb.state, "disconnected");
});
