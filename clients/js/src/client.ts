import { isAfter } from "./cursor.js";
import { Emitter } from "./emitter.js";
import {
  BadFrameError,
  ClosedError,
  NotSubscribedError,
  QueueFullError,
  RequestTimeoutError,
  SwitchboardError,
  TooLargeError,
  TransportError,
  UnauthorizedError,
} from "./errors.js";
import { jwtExp } from "./jwt.js";
import { Room, type RoomHost } from "./room.js";
import { SseConnection } from "./sse.js";
import { ConnectionLost, type Connection, type ConnectionHandler } from "./transport.js";
import type {
  ClientEvents,
  PublishInput,
  PublishResult,
  RoomEvent,
  State,
  StateInfo,
  SubscribeOptions,
  SubscribeResult,
  SwitchboardOptions,
  TokenProvider,
  TransportKind,
  WebSocketConstructor,
} from "./types.js";
import { endpointOf, type Endpoint } from "./urls.js";
import { WsConnection } from "./ws.js";

/** A connection that stayed open this long resets the backoff. */
const STABLE_MS = 2000;
/** A provider token this close to `exp` is not used for a new connection. */
const EXPIRY_SLACK_MS = 2000;

interface PendingPublish {
  id: string;
  room: string;
  text?: string;
  data?: unknown;
  resolve: (r: PublishResult) => void;
  reject: (e: Error) => void;
  /** The connection it was last sent on; null: to send. */
  sentOn: Connection | null;
  retries: number;
  /** Bytes of its WebSocket frame. */
  size: number;
  timer?: ReturnType<typeof setTimeout>;
}

interface Resolved {
  transports: TransportKind[];
  fallbackAfter: number;
  initialDelay: number;
  maxDelay: number;
  connectTimeout: number;
  requestTimeout: number;
  publishTimeout: number;
  maxPending: number;
  maxFrameBytes: number;
  pingInterval: number;
  pongTimeout: number;
  sseIdleTimeout: number;
  refreshTokens: boolean;
  refreshMargin: number;
  debug: (message: string) => void;
}

const TRANSIENT = new Set(["rate_limited", "unavailable"]);

function positive(value: number | undefined, fallback: number, name: string, allowZero = false): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0 || (!allowZero && value === 0)) {
    throw new TypeError(`option ${name} must be a ${allowZero ? "non-negative" : "positive"} number, got ${String(value)}`);
  }
  return value;
}

function randomId(): string {
  const bytes = new Uint8Array(8);
  const c = (globalThis as { crypto?: { getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
  if (c?.getRandomValues) c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function utf8Length(s: string): number {
  return new TextEncoder().encode(s).length;
}

/**
 * A Switchboard client: one connection (WebSocket, or SSE + HTTP as the
 * fallback) shared by every room, reconnected with backoff across `urls`,
 * every room resumed from its last cursor.
 */
export class Switchboard extends Emitter<ClientEvents> {
  private readonly endpoints: Endpoint[];
  private readonly fallbackEndpoints: Endpoint[];
  private readonly o: Resolved;
  private readonly tokenSource: string | TokenProvider | undefined;
  private readonly user: string | undefined;
  private readonly wsCtor: WebSocketConstructor | undefined;
  private readonly fetchFn: typeof fetch | undefined;
  private readonly rooms = new Map<string, Room>();
  private readonly pending = new Map<string, PendingPublish>();
  private readonly connectionWaiters = new Set<{ resolve: (c: Connection) => void; reject: (e: Error) => void }>();
  private readonly clientId = randomId();
  private seq = 0;

  private conn: Connection | null = null;
  /** The connection being opened, so that close() can abort it. */
  private opening: Connection | null = null;
  private _state: State = "disconnected";
  private running: Promise<void> | null = null;
  private closing = false;
  private stopped: SwitchboardError | null = null;
  private token: string | undefined;
  private tokenExp: number | undefined;
  private forceNewToken = false;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private mode: TransportKind;
  private modeFailures = 0;
  private attempt = 0;
  private wsIndex = 0;
  private sseIndex = 0;
  private wake: (() => void) | null = null;
  private warnedNoWebSocket = false;

  constructor(options: SwitchboardOptions) {
    super();
    if (!options || typeof options !== "object") throw new TypeError("new Switchboard(options): options are required");
    const urls = typeof options.urls === "string" ? [options.urls] : options.urls;
    if (!Array.isArray(urls) || urls.length === 0) throw new TypeError("option urls must name at least one URL");
    this.endpoints = urls.map(endpointOf);
    const fallback = options.fallbackUrls === undefined ? undefined : typeof options.fallbackUrls === "string" ? [options.fallbackUrls] : options.fallbackUrls;
    this.fallbackEndpoints = fallback && fallback.length > 0 ? fallback.map(endpointOf) : this.endpoints;
    const transports = options.transports ?? ["websocket", "sse"];
    if (transports.length === 0 || transports.some((t) => t !== "websocket" && t !== "sse")) {
      throw new TypeError('option transports must list "websocket" and/or "sse"');
    }
    if (options.token !== undefined && typeof options.token !== "string" && typeof options.token !== "function") {
      throw new TypeError("option token must be a string or a function returning one");
    }
    this.tokenSource = options.token;
    if (typeof options.token === "string") {
      this.token = options.token;
      this.tokenExp = jwtExp(options.token);
    }
    this.user = options.user;
    this.wsCtor =
      options.WebSocket ?? ((globalThis as { WebSocket?: WebSocketConstructor }).WebSocket as WebSocketConstructor | undefined);
    this.fetchFn = options.fetch ?? (typeof globalThis.fetch === "function" ? globalThis.fetch.bind(globalThis) : undefined);
    const debug = options.debug;
    this.o = {
      transports,
      fallbackAfter: Math.max(1, Math.floor(positive(options.fallbackAfter, 3, "fallbackAfter"))),
      initialDelay: positive(options.reconnect?.initialDelay, 250, "reconnect.initialDelay"),
      maxDelay: positive(options.reconnect?.maxDelay, 10_000, "reconnect.maxDelay"),
      connectTimeout: positive(options.connectTimeout, 10_000, "connectTimeout"),
      requestTimeout: positive(options.requestTimeout, 10_000, "requestTimeout"),
      publishTimeout: positive(options.publishTimeout, 0, "publishTimeout", true),
      maxPending: Math.floor(positive(options.maxPendingPublishes, 100, "maxPendingPublishes")),
      maxFrameBytes: positive(options.maxFrameBytes, 65_536, "maxFrameBytes"),
      pingInterval: positive(options.pingInterval, 25_000, "pingInterval", true),
      pongTimeout: positive(options.pongTimeout, 10_000, "pongTimeout"),
      sseIdleTimeout: positive(options.sseIdleTimeout, 45_000, "sseIdleTimeout"),
      refreshTokens: options.refreshTokens ?? true,
      refreshMargin: positive(options.refreshMargin, 30_000, "refreshMargin", true),
      debug: debug ? (m) => debug(m) : () => {},
    };
    this.mode = transports[0]!;
    if (options.autoConnect ?? true) queueMicrotask(() => this.connect());
  }

  /** `connecting`, `connected` or `disconnected`. */
  get state(): State {
    return this._state;
  }

  /** The transport of the current connection, if connected. */
  get transport(): TransportKind | undefined {
    return this.conn?.kind;
  }

  /** The URL of the current connection, if connected. */
  get url(): string | undefined {
    return this.conn?.url;
  }

  /** Unacknowledged publishes held now. */
  get pendingPublishes(): number {
    return this.pending.size;
  }

  /** The room `name` (the same object on every call); `since` applies to its first subscription. */
  room(name: string, options: { since?: string } = {}): Room {
    if (typeof name !== "string") throw new TypeError("room name must be a string");
    let room = this.rooms.get(name);
    if (!room) {
      room = new Room(name, this.host, options.since);
      this.rooms.set(name, room);
    } else if (options.since !== undefined && !room._everSubscribed) {
      room._initialSince = options.since;
    }
    return room;
  }

  /** Starts connecting (done at construction unless `autoConnect: false`); after a fatal close, starts again. */
  connect(): void {
    if (this.closing || this.running) return;
    this.stopped = null;
    this.running = this.run().finally(() => {
      this.running = null;
    });
  }

  /** Closes the connection for good: pending publishes and requests are rejected with `closed`. */
  async close(): Promise<void> {
    if (this.closing) {
      await this.running;
      return;
    }
    this.closing = true;
    this.clearRefresh();
    this.wake?.();
    this.opening?.close(1000, "client closed");
    this.conn?.close(1000, "client closed");
    const err = new ClosedError("the client was closed");
    this.failEverything(err);
    await this.running;
    this.setState("disconnected", {});
  }

  // ----------------------------------------------------------------- loop

  private async run(): Promise<void> {
    while (!this.closing && !this.stopped) {
      this.setState("connecting", {});
      const kind = this.pickTransport();
      if (!kind) break;
      const endpoint =
        kind === "websocket"
          ? this.endpoints[this.wsIndex % this.endpoints.length]!
          : this.fallbackEndpoints[this.sseIndex % this.fallbackEndpoints.length]!;
      let conn: Connection | undefined;
      try {
        const token = await this.tokenForConnect();
        if (this.closing || this.stopped) break;
        conn = this.makeConnection(kind, endpoint, token);
        this.o.debug(`connecting: ${kind} ${kind === "websocket" ? endpoint.ws : endpoint.http}`);
        this.opening = conn;
        await conn.open(this.probeRoom());
        this.opening = null;
      } catch (err) {
        this.opening = null;
        conn?.close();
        if (this.closing || this.stopped) break;
        this.o.debug(`connection attempt failed: ${(err as Error)?.message ?? err}`);
        if (err instanceof SwitchboardError && err.status === 401) {
          if (typeof this.tokenSource !== "function") {
            this.stop(new UnauthorizedError("the server refused the token, and no token provider can renew it", { status: 401 }));
            break;
          }
          this.forceNewToken = true;
        }
        this.modeFailures++;
        this.attempt++;
        this.rotate(kind);
        await this.backoff();
        continue;
      }
      if (this.closing || this.stopped) {
        conn.close();
        break;
      }
      const openedAt = Date.now();
      this.conn = conn;
      this.modeFailures = 0;
      this.onConnected(conn);
      this.setState("connected", { transport: conn.kind, url: conn.url });
      const info = await conn.closed;
      this.conn = null;
      if (info.code === 1009) this.refuseLargest(conn);
      this.onDisconnected(conn);
      if (this.closing) break;
      this.o.debug(`connection to ${conn.url} ended: code ${info.code ?? "-"} ${info.reason ?? ""}`);
      if (info.fatal) {
        this.stop(info.fatal);
        break;
      }
      if (info.tokenExpired) {
        if (typeof this.tokenSource !== "function") {
          this.stop(
            new UnauthorizedError("the token expired or was refused, and no token provider can renew it", {
              closeCode: info.code,
            }),
          );
          break;
        }
        this.forceNewToken = true;
      }
      if (Date.now() - openedAt >= STABLE_MS) this.attempt = 0;
      this.setState("connecting", { closeCode: info.code, reason: info.reason });
      this.rotate(kind);
      await this.backoff();
      this.attempt++;
    }
    if (!this.closing) this.setState("disconnected", {});
  }

  /**
   * Close 1009: a frame was over the server's limit. The largest publish
   * sent on that connection is refused rather than resent (which would close
   * the next connection too): `maxFrameBytes` is above the server's
   * `--max-frame-bytes`.
   */
  private refuseLargest(conn: Connection): void {
    let largest: PendingPublish | undefined;
    for (const p of this.pending.values()) {
      if (p.sentOn === conn && (!largest || p.size > largest.size)) largest = p;
    }
    if (!largest) return;
    this.pending.delete(largest.id);
    if (largest.timer) clearTimeout(largest.timer);
    largest.reject(
      new TooLargeError(
        `the server closed the connection (1009, frame too large) after this ${largest.size}-byte publish: lower maxFrameBytes to the server's --max-frame-bytes`,
        { room: largest.room, id: largest.id, closeCode: 1009 },
      ),
    );
  }

  /** A room the application uses (the SSE transport probes the API with it). */
  private probeRoom(): string | undefined {
    for (const room of this.rooms.values()) if (room._wanted) return room.name;
    return this.rooms.keys().next().value;
  }

  private pickTransport(): TransportKind | undefined {
    const allowed = this.o.transports;
    const other: TransportKind = this.mode === "websocket" ? "sse" : "websocket";
    if (this.modeFailures >= this.o.fallbackAfter && allowed.includes(other)) {
      this.o.debug(`${this.mode} failed ${this.modeFailures} times: switching to ${other}`);
      this.mode = other;
      this.modeFailures = 0;
    }
    if (this.mode === "websocket" && !this.wsCtor) {
      if (allowed.includes("sse")) {
        if (!this.warnedNoWebSocket) this.o.debug("no WebSocket constructor: using SSE + HTTP");
        this.warnedNoWebSocket = true;
        this.mode = "sse";
      } else {
        this.stop(
          new TransportError(
            "no WebSocket constructor: pass one as options.WebSocket (e.g. the ws package) or run Node with --experimental-websocket",
          ),
        );
        return undefined;
      }
    }
    if (this.mode === "sse" && !this.fetchFn) {
      if (allowed.includes("websocket") && this.wsCtor) {
        this.mode = "websocket";
      } else {
        this.stop(new TransportError("no fetch implementation for the SSE + HTTP transport: pass options.fetch"));
        return undefined;
      }
    }
    return this.mode;
  }

  private rotate(kind: TransportKind): void {
    if (kind === "websocket") this.wsIndex = (this.wsIndex + 1) % this.endpoints.length;
    else this.sseIndex = (this.sseIndex + 1) % this.fallbackEndpoints.length;
  }

  /** Exponential backoff with full jitter: uniform in [0, min(max, initial·2^attempt)]. */
  private backoff(): Promise<void> {
    const cap = Math.min(this.o.maxDelay, this.o.initialDelay * 2 ** Math.min(this.attempt, 30));
    const delay = Math.random() * cap;
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, delay);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = () => {
        this.wake = null;
        done();
      };
    }).finally(() => {
      this.wake = null;
    });
  }

  private makeConnection(kind: TransportKind, endpoint: Endpoint, token: string | undefined): Connection {
    const handler = this.handlerFor(() => conn);
    let conn: Connection;
    if (kind === "websocket") {
      conn = new WsConnection(
        {
          url: endpoint.ws,
          WebSocket: this.wsCtor!,
          token,
          user: this.user,
          connectTimeout: this.o.connectTimeout,
          pingInterval: this.o.pingInterval,
          pongTimeout: this.o.pongTimeout,
          debug: this.o.debug,
        },
        handler,
      );
    } else {
      conn = new SseConnection(
        {
          base: endpoint.http,
          fetch: this.fetchFn!,
          token,
          user: this.user,
          connectTimeout: this.o.connectTimeout,
          idleTimeout: this.o.sseIdleTimeout,
          debug: this.o.debug,
        },
        handler,
      );
    }
    return conn;
  }

  private setState(state: State, info: StateInfo): void {
    if (this._state === state) return;
    this._state = state;
    this.emit("state", state, info);
  }

  private stop(error: SwitchboardError): void {
    this.stopped = error;
    this.clearRefresh();
    this.failEverything(error);
    this.emit("error", error);
  }

  private failEverything(error: SwitchboardError): void {
    for (const p of this.pending.values()) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(withContext(error, p.room, p.id));
    }
    this.pending.clear();
    for (const w of this.connectionWaiters) w.reject(error);
    this.connectionWaiters.clear();
    for (const room of this.rooms.values()) {
      for (const w of room._waiters.splice(0)) w.reject(withContext(error, room.name));
    }
  }

  // ----------------------------------------------------------- connection

  private onConnected(conn: Connection): void {
    for (const room of this.rooms.values()) {
      if (room._wanted && room._sentOn !== conn) this.sendSubscribe(room, conn);
    }
    for (const p of this.pending.values()) if (p.sentOn !== conn) this.sendPublish(p, conn);
    for (const w of [...this.connectionWaiters]) w.resolve(conn);
    this.connectionWaiters.clear();
    this.scheduleRefresh();
  }

  private onDisconnected(conn: Connection): void {
    for (const room of this.rooms.values()) {
      if (room._sentOn === conn) room._sentOn = null;
      if (room._liveOn === conn) room._liveOn = null;
    }
    for (const p of this.pending.values()) if (p.sentOn === conn) p.sentOn = null;
  }

  private handlerFor(connOf: () => Connection): ConnectionHandler {
    const live = () => this.conn !== null && this.conn === connOf();
    return {
      subscribed: (name, cursor, recovered) => {
        if (live()) this.onSubscribed(connOf(), name, cursor, recovered);
      },
      subscribeFailed: (name, error) => {
        if (live()) this.onSubscribeFailed(connOf(), name, error);
      },
      event: (event) => {
        if (live()) this.onEvent(connOf(), event);
      },
      ack: (id, room, cursor, duplicate) => {
        if (live()) this.onAck(id, room, cursor, duplicate);
      },
      publishFailed: (id, error) => {
        if (live()) this.onPublishFailed(connOf(), id, error);
      },
      roomDropped: (name, error) => {
        if (!live()) return;
        const room = this.rooms.get(name);
        if (!room) return;
        room._wanted = false;
        room._sentOn = null;
        room._liveOn = null;
        for (const w of room._waiters.splice(0)) w.reject(error);
        room._emit("error", error);
        room._emit("unsubscribed", { room: name, error });
      },
      unsolicited: (error) => {
        if (live()) this.emit("error", error);
      },
    };
  }

  // ---------------------------------------------------------------- rooms

  private sinceFor(room: Room | undefined): string | undefined {
    if (!room) return undefined;
    return room._cursor ?? (room._everSubscribed ? undefined : room._initialSince);
  }

  private sendSubscribe(room: Room, conn: Connection): void {
    room._sentOn = conn;
    room._sentSince = this.sinceFor(room);
    conn.subscribe(room.name, room._sentSince);
  }

  private readonly host: RoomHost = {
    subscribeRoom: (room, options) => this.subscribeRoom(room, options),
    unsubscribeRoom: (room) => this.unsubscribeRoom(room),
    publishTo: (room, input) => this.publish(room, input),
    historyOf: (room, query) => this.request(room, (c) => c.history(room, query)),
    presenceOf: (room) => this.request(room, (c) => c.presence(room)),
  };

  private subscribeRoom(room: Room, options: SubscribeOptions | undefined): Promise<SubscribeResult> {
    if (this.closing) return Promise.reject(new ClosedError("the client was closed", { room: room.name }));
    if (this.stopped) return Promise.reject(withContext(this.stopped, room.name));
    const sinceGiven = options !== undefined && "since" in options;
    if (sinceGiven) {
      if (options.since === null || options.since === undefined) {
        room._cursor = undefined;
        room._initialSince = undefined;
        room._everSubscribed = false;
      } else {
        room._cursor = options.since;
      }
    }
    const conn = this.conn;
    if (!sinceGiven && room._wanted && conn && room._liveOn === conn) {
      return Promise.resolve({ cursor: room._cursor ?? "", recovered: true });
    }
    return new Promise<SubscribeResult>((resolve, reject) => {
      room._waiters.push({ resolve, reject });
      room._wanted = true;
      if (conn) {
        if (sinceGiven && room._sentOn === conn) {
          // Resubscribe from the new position.
          room._liveOn = null;
          void conn.unsubscribe(room.name).catch(() => {});
          room._sentOn = null;
        }
        if (room._sentOn !== conn) this.sendSubscribe(room, conn);
      } else if (!this.running) {
        this.connect();
      }
    });
  }

  private async unsubscribeRoom(room: Room): Promise<void> {
    const conn = this.conn;
    const wasSent = room._sentOn;
    const was = room._wanted;
    room._wanted = false;
    room._sentOn = null;
    room._liveOn = null;
    for (const w of room._waiters.splice(0)) {
      w.reject(new NotSubscribedError(`unsubscribed from ${room.name} before the subscription completed`, { room: room.name }));
    }
    if (conn && wasSent === conn) {
      try {
        await withTimeout(conn.unsubscribe(room.name), this.o.requestTimeout, `unsubscribe ${room.name}`);
      } catch (err) {
        if (!(err instanceof ConnectionLost) && !(err instanceof RequestTimeoutError)) throw err;
      }
    }
    if (was) room._emit("unsubscribed", { room: room.name });
  }

  private onSubscribed(conn: Connection, name: string, cursor: string, recovered: boolean): void {
    const room = this.rooms.get(name);
    if (!room || !room._wanted || room._sentOn !== conn) return;
    const since = room._sentSince;
    room._liveOn = conn;
    if (since === undefined || !recovered) room._cursor = cursor;
    const resumed = room._everSubscribed;
    room._everSubscribed = true;
    if (since !== undefined && !recovered) {
      room._emit("recovered", { room: name, recovered: false, cursor });
    }
    room._emit("subscribed", { room: name, cursor, recovered, resumed, transport: conn.kind });
    for (const w of room._waiters.splice(0)) w.resolve({ cursor, recovered });
  }

  private onSubscribeFailed(conn: Connection, name: string, error: SwitchboardError): void {
    const room = this.rooms.get(name);
    if (!room || !room._wanted || room._sentOn !== conn) return;
    room._sentOn = null;
    if (TRANSIENT.has(error.code)) {
      const delay = 250 + Math.random() * 750;
      this.o.debug(`subscribe ${name} refused (${error.code}): retrying in ${Math.round(delay)} ms`);
      setTimeout(() => {
        if (room._wanted && this.conn === conn && room._sentOn === null) this.sendSubscribe(room, conn);
      }, delay);
      return;
    }
    room._wanted = false;
    for (const w of room._waiters.splice(0)) w.reject(error);
    room._emit("error", error);
  }

  private onEvent(conn: Connection, event: RoomEvent): void {
    const room = this.rooms.get(event.room);
    if (!room || !room._wanted || room._liveOn !== conn) return;
    if (!isAfter(event.cursor, room._cursor)) return; // already delivered
    room._cursor = event.cursor;
    room._emit(event.type, event as never);
  }

  // ------------------------------------------------------------- publish

  private publish(room: string, input: PublishInput): Promise<PublishResult> {
    if (this.closing) return Promise.reject(new ClosedError("the client was closed", { room }));
    if (this.stopped) return Promise.reject(withContext(this.stopped, room));
    if (!input || typeof input !== "object") return Promise.reject(new BadFrameError("publish needs { text } or { data }", { room }));
    const { text, data } = input;
    if (text !== undefined && typeof text !== "string") {
      return Promise.reject(new BadFrameError("publish text must be a string", { room }));
    }
    if (text === undefined && data === undefined) {
      return Promise.reject(new BadFrameError("publish needs text or data", { room }));
    }
    const id = input.id ?? `${this.clientId}-${++this.seq}`;
    if (typeof id !== "string" || id.length === 0) return Promise.reject(new BadFrameError("publish id must be a non-empty string", { room }));
    if (this.pending.has(id)) {
      return Promise.reject(new BadFrameError(`a publish with id ${id} is already pending`, { room, id }));
    }
    if (this.pending.size >= this.o.maxPending) {
      return Promise.reject(
        new QueueFullError(
          `${this.pending.size} publishes are waiting for acknowledgement (maxPendingPublishes): refused`,
          { room, id },
        ),
      );
    }
    const frame: Record<string, unknown> = { type: "publish", room, id };
    if (text !== undefined) frame.text = text;
    if (data !== undefined) frame.data = data;
    let size: number;
    try {
      size = utf8Length(JSON.stringify(frame));
    } catch (err) {
      return Promise.reject(new BadFrameError(`publish data is not JSON-serialisable: ${(err as Error).message}`, { room, id }));
    }
    if (size > this.o.maxFrameBytes) {
      return Promise.reject(new TooLargeError(`the publish frame is ${size} bytes, the limit is ${this.o.maxFrameBytes}`, { room, id }));
    }
    return new Promise<PublishResult>((resolve, reject) => {
      const entry: PendingPublish = { id, room, resolve, reject, sentOn: null, retries: 0, size };
      if (text !== undefined) entry.text = text;
      if (data !== undefined) entry.data = data;
      this.pending.set(id, entry);
      if (this.o.publishTimeout > 0) {
        entry.timer = setTimeout(() => {
          if (this.pending.get(id) !== entry) return;
          this.pending.delete(id);
          reject(new RequestTimeoutError(`publish ${id} was not acknowledged within ${this.o.publishTimeout} ms`, { room, id }));
        }, this.o.publishTimeout);
      }
      if (this.conn) this.sendPublish(entry, this.conn);
      else if (!this.running && !this.stopped) this.connect();
    });
  }

  private sendPublish(p: PendingPublish, conn: Connection): void {
    p.sentOn = conn;
    const out: { id: string; room: string; text?: string; data?: unknown } = { id: p.id, room: p.room };
    if (p.text !== undefined) out.text = p.text;
    if (p.data !== undefined) out.data = p.data;
    conn.publish(out);
  }

  private onAck(id: string, room: string, cursor: string, duplicate: boolean): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    p.resolve({ room: room || p.room, cursor, duplicate, id });
  }

  private onPublishFailed(conn: Connection, id: string, error: SwitchboardError): void {
    const p = this.pending.get(id);
    if (!p) return;
    if (TRANSIENT.has(error.code)) {
      p.sentOn = null;
      p.retries++;
      const delay = Math.random() * Math.min(5000, 200 * 2 ** Math.min(p.retries, 10));
      this.o.debug(`publish ${id} refused (${error.code}): retrying in ${Math.round(delay)} ms`);
      setTimeout(() => {
        if (this.pending.get(id) === p && p.sentOn === null && this.conn === conn) this.sendPublish(p, conn);
      }, delay);
      return;
    }
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    p.reject(withContext(error, p.room, p.id));
  }

  // ------------------------------------------------------------ requests

  private async request<T>(room: string, op: (c: Connection) => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.o.requestTimeout;
    for (;;) {
      if (this.closing) throw new ClosedError("the client was closed", { room });
      if (this.stopped) throw withContext(this.stopped, room);
      const conn = this.conn ?? (await this.waitForConnection(deadline, room));
      try {
        return await withTimeout(op(conn), deadline - Date.now(), `request on ${room}`, room);
      } catch (err) {
        if (err instanceof ConnectionLost) {
          // Retried on the next connection, once this one is known gone.
          if (this.conn === conn) await Promise.race([conn.closed, sleep(deadline - Date.now())]);
          continue;
        }
        throw withContext(err, room);
      }
    }
  }

  private waitForConnection(deadline: number, room: string): Promise<Connection> {
    if (!this.running && !this.closing) this.connect();
    return new Promise<Connection>((resolve, reject) => {
      const waiter = {
        resolve: (c: Connection) => {
          clearTimeout(timer);
          resolve(c);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        this.connectionWaiters.delete(waiter);
        reject(new RequestTimeoutError(`not connected within ${this.o.requestTimeout} ms`, { room }));
      }, Math.max(0, deadline - Date.now()));
      this.connectionWaiters.add(waiter);
    });
  }

  // --------------------------------------------------------------- tokens

  /** The token for a new connection: a provider's is renewed when forced (4001) or about to expire. */
  private async tokenForConnect(): Promise<string | undefined> {
    const source = this.tokenSource;
    if (typeof source !== "function") return source;
    const expiring = this.tokenExp !== undefined && this.tokenExp * 1000 - Date.now() < EXPIRY_SLACK_MS;
    if (this.token === undefined || this.forceNewToken || expiring) {
      await this.fetchToken();
      this.forceNewToken = false;
    }
    return this.token;
  }

  private async fetchToken(): Promise<string> {
    const source = this.tokenSource as TokenProvider;
    let token: unknown;
    try {
      token = await source();
    } catch (err) {
      const error = new UnauthorizedError(`the token provider failed: ${(err as Error)?.message ?? err}`, { cause: err });
      this.emit("error", error);
      throw error;
    }
    if (typeof token !== "string" || token.length === 0) {
      const error = new UnauthorizedError("the token provider returned no token");
      this.emit("error", error);
      throw error;
    }
    this.token = token;
    this.tokenExp = jwtExp(token);
    return token;
  }

  private clearRefresh(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
  }

  /** Refresh a provider token before `exp`: a margin of at most a third of its remaining life. */
  private scheduleRefresh(retryIn?: number): void {
    this.clearRefresh();
    if (typeof this.tokenSource !== "function" || !this.o.refreshTokens || this.closing || this.stopped) return;
    let delay = retryIn;
    if (delay === undefined) {
      if (this.tokenExp === undefined) return;
      const remaining = this.tokenExp * 1000 - Date.now();
      const margin = Math.min(this.o.refreshMargin, remaining / 3);
      delay = Math.max(500, remaining - margin);
    }
    this.refreshTimer = setTimeout(() => void this.refreshNow(), delay);
    (this.refreshTimer as { unref?: () => void }).unref?.();
  }

  private async refreshNow(): Promise<void> {
    this.refreshTimer = undefined;
    if (this.closing || this.stopped) return;
    let token: string;
    try {
      token = await this.fetchToken();
    } catch {
      this.scheduleRefresh(2000);
      return;
    }
    const conn = this.conn;
    if (conn) {
      try {
        const exp = await withTimeout(conn.refresh(token), this.o.requestTimeout, "refresh");
        if (conn.kind === "sse" && this.conn === conn) {
          // SSE refreshes by reopening each stream with the new token from its cursor (SPEC §7).
          for (const room of this.rooms.values()) if (room._wanted) this.sendSubscribe(room, conn);
        }
        this.emit("refreshed", { exp, transport: conn.kind });
      } catch (err) {
        if (!(err instanceof ConnectionLost)) {
          this.emit("error", err instanceof SwitchboardError ? err : new UnauthorizedError(String(err)));
        }
      }
    }
    this.scheduleRefresh();
  }
}

function withContext(error: unknown, room?: string, id?: string): Error {
  if (!(error instanceof SwitchboardError)) return error as Error;
  if ((room === undefined || error.room === room) && (id === undefined || error.id === id)) return error;
  const copy = Object.create(Object.getPrototypeOf(error)) as SwitchboardError;
  Object.assign(copy, error, { room: error.room ?? room, id: error.id ?? id, message: error.message, stack: error.stack });
  return copy;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string, room?: string): Promise<T> {
  if (ms <= 0) return Promise.reject(new RequestTimeoutError(`${what}: timed out`, { room }));
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new RequestTimeoutError(`${what}: no answer within ${Math.round(ms)} ms`, { room })), ms);
    promise.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}


