/**
 * The WebSocket transport: JSON text frames of SPEC §3 on `/ws`
 * (subprotocol `switchboard.v1.json`).
 *
 * Replies that carry no request id (`subscribed`, `unsubscribed`,
 * `history`, `presence`, `pong`, `refreshed`, and `error` frames without
 * `id`) are matched to requests by order: the server answers the frames of
 * one connection in the order it read them (publishes excepted, which are
 * matched by `id`).
 */
import { errorFromCode, ForbiddenError, TransportError, type SwitchboardError } from "./errors.js";
import {
  ConnectionLost,
  toRoomEvent,
  type CloseInfo,
  type Connection,
  type ConnectionHandler,
  type OutgoingPublish,
} from "./transport.js";
import type { HistoryQuery, HistoryResult, PresenceResult, RoomEvent, WebSocketConstructor, WebSocketLike } from "./types.js";
import { withQuery } from "./urls.js";
import { DisconnectedError } from "./errors.js";

export const SUBPROTOCOL = "switchboard.v1.json";

const OPEN = 1;

type Pending =
  | { kind: "subscribe"; room: string }
  | { kind: "unsubscribe"; room: string; resolve: () => void }
  | { kind: "history"; room: string; resolve: (r: HistoryResult) => void; reject: (e: Error) => void }
  | { kind: "presence"; room: string; resolve: (r: PresenceResult) => void; reject: (e: Error) => void }
  | { kind: "ping" }
  | { kind: "refresh"; resolve: (exp: number | undefined) => void; reject: (e: Error) => void };

export interface WsOptions {
  url: string;
  WebSocket: WebSocketConstructor;
  token?: string;
  user?: string;
  connectTimeout: number;
  pingInterval: number;
  pongTimeout: number;
  debug: (message: string) => void;
}

/** `the refreshed token no longer allows <room>; unsubscribed` (gateway session.rs). */
const DROPPED_BY_REFRESH = /no longer allows (\S+); unsubscribed/;

export class WsConnection implements Connection {
  readonly kind = "websocket" as const;
  readonly url: string;
  readonly closed: Promise<CloseInfo>;
  private resolveClosed!: (info: CloseInfo) => void;
  private ws: WebSocketLike | undefined;
  private fifo: Pending[] = [];
  private opened = false;
  private finished = false;
  private lastSeen = 0;
  private pingSentAt = 0;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  /** Rooms an `unsubscribed` frame dropped without our asking (refresh). */
  private dropped = new Set<string>();
  /** The server's `error` "token expired" that precedes close 4001. */
  private sawTokenExpiry = false;
  private abortOpen: ((why: string) => void) | undefined;

  constructor(
    private readonly options: WsOptions,
    private readonly handler: ConnectionHandler,
  ) {
    this.url = options.url;
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  open(): Promise<void> {
    const o = this.options;
    return new Promise<void>((resolve, reject) => {
      const url = withQuery(o.url, { access_token: o.token, user: o.token ? undefined : o.user });
      let settled = false;
      const fail = (why: string, cause?: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.finished = true;
        this.detach();
        // Browsers hide why an upgrade failed; the ws package says
        // "Unexpected server response: 401" when the token was refused.
        const status = /server response: (\d{3})/.exec(why);
        reject(new TransportError(`WebSocket ${o.url}: ${why}`, { cause, status: status ? Number(status[1]) : undefined }));
      };
      const timer = setTimeout(() => fail(`not open after ${o.connectTimeout} ms`), o.connectTimeout);
      this.abortOpen = fail;
      let ws: WebSocketLike;
      try {
        ws = new o.WebSocket(url, SUBPROTOCOL);
      } catch (err) {
        fail(`cannot be created: ${(err as Error)?.message ?? err}`, err);
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.opened = true;
        this.lastSeen = Date.now();
        this.startPings();
        resolve();
      };
      ws.onerror = (ev) => {
        if (!this.opened) fail(`error: ${errorText(ev)}`, ev);
        // After open, an error is followed by close: handled there.
      };
      ws.onclose = (ev) => {
        if (!this.opened) {
          fail(`closed before open (code ${ev.code}${ev.reason ? `, ${ev.reason}` : ""})`);
          return;
        }
        this.finish(closeInfo(ev.code, ev.reason, this.sawTokenExpiry));
      };
      ws.onmessage = (ev) => {
        if (this.finished) return;
        this.lastSeen = Date.now();
        const text = typeof ev.data === "string" ? ev.data : decode(ev.data);
        if (text === undefined) return;
        let frame: Record<string, unknown>;
        try {
          frame = JSON.parse(text) as Record<string, unknown>;
        } catch {
          o.debug(`ignoring a frame that is not JSON: ${text.slice(0, 80)}`);
          return;
        }
        if (frame && typeof frame === "object") this.onFrame(frame);
      };
    });
  }

  private detach(): void {
    const ws = this.ws;
    if (!ws) return;
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = () => {};
    try {
      ws.close();
    } catch {
      // Closing a socket that never opened may throw in some implementations.
    }
  }

  private startPings(): void {
    const { pingInterval, pongTimeout } = this.options;
    if (!(pingInterval > 0)) return;
    const tick = Math.max(50, Math.min(pingInterval, pongTimeout) / 4);
    this.pingTimer = setInterval(() => {
      const now = Date.now();
      if (this.pingSentAt && now - this.pingSentAt > pongTimeout && this.lastSeen < this.pingSentAt) {
        this.options.debug(`no answer to ping within ${pongTimeout} ms: dropping ${this.url}`);
        this.close(4000, "ping timeout");
        return;
      }
      if (now - this.lastSeen >= pingInterval && (!this.pingSentAt || this.lastSeen >= this.pingSentAt)) {
        this.pingSentAt = now;
        this.fifo.push({ kind: "ping" });
        this.send({ type: "ping" });
      }
    }, tick);
    const t = this.pingTimer as { unref?: () => void };
    t.unref?.();
  }

  private send(frame: Record<string, unknown>): boolean {
    const ws = this.ws;
    if (!ws || this.finished || ws.readyState !== OPEN) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /** The first pending request of `kind` (for `room`); normally the head. */
  private take<K extends Pending["kind"]>(kind: K, room?: string): Extract<Pending, { kind: K }> | undefined {
    const i = this.fifo.findIndex((p) => p.kind === kind && (room === undefined || !("room" in p) || p.room === room));
    if (i < 0) return undefined;
    if (i > 0) this.options.debug(`reply ${kind} matched request #${i}, not the head`);
    return this.fifo.splice(i, 1)[0] as Extract<Pending, { kind: K }>;
  }

  private onFrame(frame: Record<string, unknown>): void {
    const h = this.handler;
    const type = frame.type;
    switch (type) {
      case "message":
      case "join":
      case "leave": {
        const event = toRoomEvent(frame, type);
        if (event) h.event(event);
        return;
      }
      case "ack":
        if (typeof frame.id === "string" && typeof frame.cursor === "string") {
          h.ack(frame.id, String(frame.room), frame.cursor, frame.duplicate === true);
        }
        return;
      case "subscribed": {
        const room = String(frame.room);
        this.take("subscribe", room);
        h.subscribed(room, String(frame.cursor), frame.recovered !== false);
        return;
      }
      case "unsubscribed": {
        const room = String(frame.room);
        const pending = this.take("unsubscribe", room);
        if (pending) pending.resolve();
        else this.dropped.add(room);
        return;
      }
      case "history": {
        const pending = this.take("history");
        const events = Array.isArray(frame.events)
          ? (frame.events as Record<string, unknown>[])
              .map((e) => toRoomEvent(e, String(e.type)))
              .filter((e): e is RoomEvent => e !== undefined)
          : [];
        pending?.resolve({ room: String(frame.room), events });
        return;
      }
      case "presence": {
        const pending = this.take("presence");
        pending?.resolve({ room: String(frame.room), users: Array.isArray(frame.users) ? (frame.users as string[]) : [] });
        return;
      }
      case "pong":
        this.take("ping");
        return;
      case "refreshed": {
        const pending = this.take("refresh");
        for (const room of this.dropped) {
          h.roomDropped(room, new ForbiddenError(`the server unsubscribed ${room}`, { room }));
        }
        this.dropped.clear();
        pending?.resolve(typeof frame.exp === "number" ? frame.exp : undefined);
        return;
      }
      case "error":
        this.onError(frame);
        return;
      default:
        this.options.debug(`ignoring frame of type ${String(type)}`);
    }
  }

  private onError(frame: Record<string, unknown>): void {
    const h = this.handler;
    const code = String(frame.code);
    const message = typeof frame.message === "string" ? frame.message : code;
    if (typeof frame.id === "string") {
      h.publishFailed(frame.id, errorFromCode(code, message, { id: frame.id }));
      return;
    }
    if (code === "unauthorized" && message === "token expired") {
      // Sent just before close 4001 (ws-gateway connection.rs).
      this.sawTokenExpiry = true;
      return;
    }
    const drop = code === "forbidden" ? DROPPED_BY_REFRESH.exec(message) : null;
    if (drop) {
      const room = drop[1]!;
      this.dropped.delete(room);
      h.roomDropped(room, errorFromCode(code, message, { room }));
      return;
    }
    const pending = this.fifo.shift();
    if (!pending) {
      h.unsolicited(errorFromCode(code, message));
      return;
    }
    const room = "room" in pending ? pending.room : undefined;
    const error = errorFromCode(code, message, { room });
    switch (pending.kind) {
      case "subscribe":
        h.subscribeFailed(pending.room, error);
        return;
      case "unsubscribe":
        // not_subscribed (or anything else): the room is not subscribed either way.
        pending.resolve();
        return;
      case "history":
      case "presence":
      case "refresh":
        pending.reject(error);
        return;
      case "ping":
        // A rate-limited ping: the connection is alive all the same.
        return;
    }
  }

  subscribe(room: string, since: string | undefined): void {
    this.fifo.push({ kind: "subscribe", room });
    const frame: Record<string, unknown> = { type: "subscribe", room };
    if (since !== undefined) frame.since = since;
    if (!this.send(frame)) this.fifo.pop();
  }

  unsubscribe(room: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const pending: Pending = { kind: "unsubscribe", room, resolve };
      this.fifo.push(pending);
      if (!this.send({ type: "unsubscribe", room })) {
        this.fifo.pop();
        reject(new ConnectionLost());
      }
    });
  }

  publish(p: OutgoingPublish): void {
    const frame: Record<string, unknown> = { type: "publish", room: p.room, id: p.id };
    if (p.text !== undefined) frame.text = p.text;
    if (p.data !== undefined) frame.data = p.data;
    this.send(frame);
  }

  history(room: string, query: HistoryQuery): Promise<HistoryResult> {
    return new Promise<HistoryResult>((resolve, reject) => {
      this.fifo.push({ kind: "history", room, resolve, reject });
      const frame: Record<string, unknown> = { type: "history", room };
      if (query.before !== undefined) frame.before = query.before;
      if (query.after !== undefined) frame.after = query.after;
      if (query.limit !== undefined) frame.limit = query.limit;
      if (!this.send(frame)) {
        this.fifo.pop();
        reject(new ConnectionLost());
      }
    });
  }

  presence(room: string): Promise<PresenceResult> {
    return new Promise<PresenceResult>((resolve, reject) => {
      this.fifo.push({ kind: "presence", room, resolve, reject });
      if (!this.send({ type: "presence", room })) {
        this.fifo.pop();
        reject(new ConnectionLost());
      }
    });
  }

  refresh(token: string): Promise<number | undefined> {
    return new Promise<number | undefined>((resolve, reject) => {
      this.fifo.push({ kind: "refresh", resolve, reject });
      if (!this.send({ type: "refresh", token })) {
        this.fifo.pop();
        reject(new ConnectionLost());
      }
    });
  }

  close(code = 1000, reason = ""): void {
    if (!this.opened) {
      this.abortOpen?.("closed by the client");
      return;
    }
    if (this.finished) return;
    const ws = this.ws;
    this.finish({ code, reason, local: true });
    try {
      const terminate = (ws as { terminate?: () => void } | undefined)?.terminate;
      // A peer that stopped answering will not answer the close either:
      // drop the socket at once where the implementation can (ws package).
      if (code === 4000 && typeof terminate === "function") terminate.call(ws);
      else ws?.close(code, reason);
    } catch {
      // Already closing.
    }
  }

  private finish(info: CloseInfo): void {
    if (this.finished) return;
    this.finished = true;
    if (this.pingTimer) clearInterval(this.pingTimer);
    const lost = new ConnectionLost(`connection to ${this.url} closed${info.code ? ` (${info.code})` : ""}`);
    for (const p of this.fifo.splice(0)) {
      if (p.kind === "history" || p.kind === "presence" || p.kind === "refresh") p.reject(lost);
      else if (p.kind === "unsubscribe") p.resolve();
    }
    this.resolveClosed(info);
  }
}

/** What a close code asks of the client (SPEC §3, §7, §12). */
function closeInfo(code: number, reason: string, sawTokenExpiry: boolean): CloseInfo {
  if (code === 4001 || (sawTokenExpiry && code !== 4003)) return { code, reason, tokenExpired: true };
  if (code === 4003) {
    return {
      code,
      reason,
      fatal: new DisconnectedError(`the server ended this session (close ${code}${reason ? `: ${reason}` : ""})`, {
        closeCode: code,
      }),
    };
  }
  // 1012 (restart), 1013 (feed lost), 4008 (slow consumer), 1001, 1006 …: reconnect and resume.
  return { code, reason };
}

function decode(data: unknown): string | undefined {
  try {
    if (data instanceof ArrayBuffer) return new TextDecoder().decode(data);
    if (ArrayBuffer.isView(data)) return new TextDecoder().decode(data);
  } catch {
    return undefined;
  }
  return undefined;
}

function errorText(ev: unknown): string {
  const e = ev as { message?: unknown; error?: { message?: unknown } } | undefined;
  if (e && typeof e.message === "string" && e.message) return e.message;
  if (e?.error && typeof e.error.message === "string") return e.error.message;
  return "connection failed";
}

export type { SwitchboardError };
