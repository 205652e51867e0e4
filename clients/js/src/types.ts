import type { SwitchboardError } from "./errors.js";

/** Connection state of a {@link Switchboard} client. */
export type State = "connecting" | "connected" | "disconnected";

/** `websocket`: the JSON WebSocket protocol (SPEC §3). `sse`: SSE streams to receive, the HTTP API to send (SPEC §4). */
export type TransportKind = "websocket" | "sse";

/** A published message as delivered (SPEC §3 `message`). */
export interface MessageEvent {
  type: "message";
  room: string;
  /** Position of the event in the room log, `<epoch>:<offset>`; opaque. */
  cursor: string;
  /** The publish id (the client's idempotency key), when the publisher gave one. */
  id?: string;
  user: string;
  text?: string;
  /** JSON payload (SPEC §10), when the server delivers one. */
  data?: unknown;
  /** Base64 bytes (SPEC §10, gRPC publishers), when the server delivers them. */
  binary?: string;
  /** RFC 3339 time the event was stored. */
  ts: string;
}

/** A user entered (`join`) or left (`leave`) the room. */
export interface PresenceEvent {
  type: "join" | "leave";
  room: string;
  cursor: string;
  user: string;
  ts: string;
}

/** Any stored event of a room. */
export type RoomEvent = MessageEvent | PresenceEvent;

/** History could not cover a gap: events between the last delivered cursor and `cursor` were lost. */
export interface RecoveredEvent {
  room: string;
  recovered: false;
  /** Where live delivery starts again (the room's head when it resumed). */
  cursor: string;
}

/** A (re)subscription took effect. */
export interface SubscribedEvent {
  room: string;
  /** The position just before the first live event. */
  cursor: string;
  /** False when a resume could not replay everything missed. */
  recovered: boolean;
  /** True for every subscription after the first one (a resume after a reconnect). */
  resumed: boolean;
  transport: TransportKind;
}

export interface SubscribeResult {
  cursor: string;
  recovered: boolean;
}

export interface SubscribeOptions {
  /**
   * Resume after this cursor. Defaults to the room's last delivered cursor
   * (or the `since` given to `sb.room()`); `null` starts live, forgetting it.
   */
  since?: string | null;
}

export interface PublishInput {
  text?: string;
  /** Any JSON value (SPEC §10). See the README about server support. */
  data?: unknown;
  /** Idempotency key; generated (unique per client) when absent. */
  id?: string;
}

export interface PublishResult {
  room: string;
  cursor: string;
  /** True when the server had already stored this id (a retry): `cursor` is the original one. */
  duplicate: boolean;
  id: string;
}

export interface HistoryQuery {
  /** Events strictly before this cursor (newest first page when `after` is absent). */
  before?: string;
  /** Events strictly after this cursor (the oldest ones after it). */
  after?: string;
  /** Page size (server default 50, at most 1000). */
  limit?: number;
}

export interface HistoryResult {
  room: string;
  /** Oldest first. */
  events: RoomEvent[];
}

export interface PresenceResult {
  room: string;
  users: string[];
}

/** What the client needs of a WebSocket: the browser API, Node's global or the `ws` package. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol?: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string; wasClean?: boolean }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export type TokenProvider = () => string | Promise<string>;

export interface ReconnectOptions {
  /** Base of the exponential backoff, ms (default 250). */
  initialDelay?: number;
  /** Cap of the backoff, ms (default 10000). */
  maxDelay?: number;
}

export interface SwitchboardOptions {
  /** Gateways to use, rotated through on reconnect: `ws(s)://host/ws` or `http(s)://host`. */
  urls: string | string[];
  /** A JWT, or a function returning one (called before `exp` to refresh in place, and after a 4001 close). */
  token?: string | TokenProvider;
  /** Anonymous user name (`?user=`), for servers without JWT. */
  user?: string;
  /** WebSocket constructor; defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** `fetch` for the SSE + HTTP transport; defaults to `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** Transports in order of preference (default `["websocket", "sse"]`). */
  transports?: TransportKind[];
  /** Consecutive failed connection attempts of one transport before switching to the other (default 3). */
  fallbackAfter?: number;
  /** Base URLs of the SSE + HTTP transport; default: derived from `urls`. */
  fallbackUrls?: string | string[];
  reconnect?: ReconnectOptions;
  /** A connection attempt that has not opened by then fails, ms (default 10000). */
  connectTimeout?: number;
  /** Bound of history, presence and unsubscribe, including waiting for a connection, ms (default 10000). */
  requestTimeout?: number;
  /** Bound of a publish until acknowledged, ms; 0 (default) retries until acknowledged or `close()`. */
  publishTimeout?: number;
  /** Unacknowledged publishes held at most; more are refused at once with `queue_full` (default 100). */
  maxPendingPublishes?: number;
  /** Largest frame the server accepts (its `--max-frame-bytes`); larger publishes are refused locally (default 65536). */
  maxFrameBytes?: number;
  /** A WebSocket silent this long gets a `ping` frame, ms; 0 disables (default 25000). */
  pingInterval?: number;
  /** A ping not answered within this drops the connection, ms (default 10000). */
  pongTimeout?: number;
  /** An SSE stream silent this long (no event, no heartbeat) is reconnected, ms (default 45000). */
  sseIdleTimeout?: number;
  /** Refresh provider tokens before `exp` without reconnecting (default true). */
  refreshTokens?: boolean;
  /** Refresh this long before `exp` at most (never more than a third of the token's remaining life), ms (default 30000). */
  refreshMargin?: number;
  /** Connect at construction (default true); otherwise on `connect()` or the first subscribe/publish/request. */
  autoConnect?: boolean;
  /** Diagnostic messages (connection attempts, failures). */
  debug?: (message: string) => void;
}

export interface StateInfo {
  transport?: TransportKind;
  /** The URL connected to (WebSocket URL, or SSE/HTTP base). */
  url?: string;
  /** Close code of the connection that ended, if any. */
  closeCode?: number;
  reason?: string;
}

export interface ClientEvents {
  state: (state: State, info: StateInfo) => void;
  /** Errors not tied to one request: token provider failures, refused refreshes, fatal closes. */
  error: (error: SwitchboardError) => void;
  /** A token was refreshed in place (`refreshed` frame, or SSE streams reopened with it). */
  refreshed: (info: { exp: number | undefined; transport: TransportKind }) => void;
}

export interface RoomEvents {
  message: (event: MessageEvent) => void;
  join: (event: PresenceEvent) => void;
  leave: (event: PresenceEvent) => void;
  recovered: (event: RecoveredEvent) => void;
  subscribed: (event: SubscribedEvent) => void;
  /** The room stopped being subscribed: `unsubscribe()`, or the server dropped it (with `error`). */
  unsubscribed: (event: { room: string; error?: SwitchboardError }) => void;
  error: (error: SwitchboardError) => void;
}
