// An Express backend that announces new orders in a Switchboard room.
//
// The seed's "Express" row, as an application backend: `POST /orders` is a
// stand-in for your order logic; it publishes a notification into a room
// through Switchboard's HTTP API (SPEC §4, `POST /api/rooms/{room}/messages`),
// and every WebSocket, SSE and gRPC subscriber of that room gets it.
//
// Each notification carries an id derived from the order (`order-<id>`), so
// a retry — the client's (same order id or `Idempotency-Key`) or this
// backend's own after a lost reply — is stored once: Switchboard answers it
// with the original cursor and `duplicate: true`.
//
// Environment: SWITCHBOARD_URL (required, e.g. http://localhost:8080),
// SWITCHBOARD_ROOM (default `orders`), SWITCHBOARD_USER (default
// `orders-service`; servers without JWT), SWITCHBOARD_TOKEN (a JWT, for
// servers with auth), PORT (default 3000; 0 picks a free one), HOST
// (default 127.0.0.1).
//
//   SWITCHBOARD_URL=http://localhost:8080 node express_backend.js

import express from "express";
import { randomUUID } from "node:crypto";
import { pathToFileURL } from "node:url";

const ORDER_ID = /^[A-Za-z0-9_-]{1,64}$/;
const RETRYABLE_STATUS = new Set([429, 502, 503, 504]);

export class SwitchboardError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

/** The one call of Switchboard's HTTP API this backend needs. */
export class SwitchboardPublisher {
  constructor({ url, user, token, attempts = 5, timeoutMs = 5000, fetch = globalThis.fetch }) {
    if (!url) throw new Error("set SWITCHBOARD_URL, e.g. http://localhost:8080");
    this.base = url.replace(/\/+$/, "");
    this.user = user;
    this.token = token;
    this.attempts = attempts;
    this.timeoutMs = timeoutMs;
    this.fetch = fetch;
  }

  /** Publishes `text` with `id`; retried on network errors and 429/5xx
   * with the same id, so it is stored at most once. Resolves with
   * `{room, cursor, duplicate, id}`. */
  async publish(room, text, id) {
    const url = new URL(`${this.base}/api/rooms/${encodeURIComponent(room)}/messages`);
    const headers = { "content-type": "application/json", "idempotency-key": id };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    else if (this.user) url.searchParams.set("user", this.user);
    let delay = 50;
    for (let attempt = 1; ; attempt++) {
      const last = attempt >= this.attempts;
      try {
        const response = await this.fetch(url, {
          method: "POST",
          headers,
          body: JSON.stringify({ text, id }),
          signal: AbortSignal.timeout(this.timeoutMs),
        });
        const body = await response.json().catch(() => ({}));
        if (response.status === 201) return body;
        if (!RETRYABLE_STATUS.has(response.status) || last) {
          throw new SwitchboardError(response.status, body.error?.code ?? "unexpected", body.error?.message ?? "");
        }
      } catch (err) {
        // A refused or reset connection, a timeout, a lost reply: it may or
        // may not have been stored, and the same id makes the retry safe.
        if (err instanceof SwitchboardError || last) throw err;
      }
      await new Promise((resolve) => setTimeout(resolve, delay * (0.5 + Math.random() / 2)));
      delay = Math.min(delay * 2, 1000);
    }
  }
}

export function createApp({ publisher, room = "orders" }) {
  const app = express();
  app.use(express.json({ limit: "16kb" }));

  app.post("/orders", async (req, res) => {
    const { order_id: given, item, quantity } = req.body ?? {};
    const key = req.get("idempotency-key");
    const orderId = given ?? key ?? randomUUID();
    if (!ORDER_ID.test(String(orderId))) return res.status(422).json({ error: "order_id must match " + ORDER_ID });
    if (typeof item !== "string" || item.length < 1 || item.length > 200) {
      return res.status(422).json({ error: "item must be a string of 1 to 200 characters" });
    }
    if (!Number.isInteger(quantity) || quantity < 1 || quantity > 10_000) {
      return res.status(422).json({ error: "quantity must be an integer from 1 to 10000" });
    }
    try {
      const ack = await publisher.publish(room, `order ${orderId}: ${quantity} x ${item}`, `order-${orderId}`);
      res.status(201).json({ order_id: orderId, room: ack.room, cursor: ack.cursor, duplicate: ack.duplicate });
    } catch (err) {
      if (err instanceof SwitchboardError) {
        res.status(502).json({ error: { switchboard: err.code, message: err.message } });
      } else {
        res.status(503).json({ error: { switchboard: "unreachable", message: String(err.cause ?? err) } });
      }
    }
  });

  app.get("/healthz", (_req, res) => res.json({ ok: true }));
  return app;
}

// Run directly: listen, and print where (one JSON line) for scripts.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const publisher = new SwitchboardPublisher({
    url: process.env.SWITCHBOARD_URL,
    user: process.env.SWITCHBOARD_USER ?? "orders-service",
    token: process.env.SWITCHBOARD_TOKEN,
  });
  const app = createApp({ publisher, room: process.env.SWITCHBOARD_ROOM ?? "orders" });
  const server = app.listen(Number(process.env.PORT ?? 3000), process.env.HOST ?? "127.0.0.1", () => {
    const { address, port } = server.address();
    console.log(JSON.stringify({ listening: `http://${address}:${port}` }));
  });
  for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => server.close(() => process.exit(0)));
}
