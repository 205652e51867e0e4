/**
 * The SSE + HTTP transport (SPEC §4): one `GET /sse/rooms/{room}` stream per
 * room to receive (read with `fetch`, so it can carry `Authorization` and
 * `Last-Event-ID` in browsers and Node alike), the JSON HTTP API to
 * publish (`POST /api/rooms/{room}/messages`), page history and read
 * presence.
 *
 * All streams and requests of one connection use one base URL; any of them
 * failing at the network level ends the connection, and the client
 * reconnects every room from its last cursor (as with a WebSocket).
 */
import { errorFromCode, SwitchboardError, TransportError } from "./errors.js";
import { jwtExp } from "./jwt.js";
import {
  ConnectionLost,
  toRoomEvent,
  type CloseInfo,
  type Connection,
  type ConnectionHandler,
  type OutgoingPublish,
} from "./transport.js";
import type { HistoryQuery, HistoryResult, PresenceResult, RoomEvent } from "./types.js";
import { withQuery } from "./urls.js";

export interface SseOptions {
  /** Base URL, `http(s)://host[/prefix]`. */
  base: string;
  fetch: typeof fetch;
  token?: string;
  user?: string;
  connectTimeout: number;
  idleTimeout: number;
  debug: (message: string) => void;
}

interface Stream {
  room: string;
  abort: AbortController;
  idle: ReturnType<typeof setTimeout> | undefined;
}

/** HTTP statuses that refuse one request (the connection is fine). */
const REQUEST_REFUSALS = new Set([400, 403, 413]);

export class SseConnection implements Connection {
  readonly kind = "sse" as const;
  readonly url: string;
  readonly closed: Promise<CloseInfo>;
  private resolveClosed!: (info: CloseInfo) => void;
  private finished = false;
  private streams = new Map<string, Stream>();
  private token: string | undefined;
  private publishes: Promise<void> = Promise.resolve();
  private requests = new Set<AbortController>();
  private probe: AbortController | undefined;

  constructor(
    private readonly options: SseOptions,
    private readonly handler: ConnectionHandler,
  ) {
    this.url = options.base;
    this.token = options.token;
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  /**
   * Probes the host with a cheap API request (CORS-enabled, unlike the ops
   * endpoints): `GET /api/rooms/{room}/presence`. Any answer of the API
   * means the host is there (a 403 for a room the token does not allow
   * too); 401 means the token is refused; 404, 5xx or no answer: not here.
   */
  async open(probeRoom = "lobby"): Promise<void> {
    const abort = new AbortController();
    this.probe = abort;
    const timer = setTimeout(() => abort.abort(), this.options.connectTimeout);
    try {
      const url = this.withUser(`${this.roomUrl(probeRoom, "api/rooms")}/presence`);
      const res = await this.options.fetch(url, { signal: abort.signal, headers: this.headers({ accept: "application/json" }) });
      await res.body?.cancel().catch(() => {});
      if (res.status === 401) {
        throw new TransportError(`${this.options.base} refused the token (401)`, { status: 401 });
      }
      if (res.status === 404 || res.status >= 500) {
        throw new TransportError(`${this.options.base} does not serve the Switchboard API (HTTP ${res.status})`, {
          status: res.status,
        });
      }
    } catch (err) {
      this.finished = true;
      if (err instanceof SwitchboardError) throw err;
      throw new TransportError(`HTTP ${this.options.base}: ${(err as Error)?.message ?? err}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    const h: Record<string, string> = { ...extra };
    if (this.token) h.authorization = `Bearer ${this.token}`;
    return h;
  }

  private withUser(url: string, params: Record<string, string | undefined> = {}): string {
    return withQuery(url, { ...params, user: this.token ? undefined : this.options.user });
  }

  private roomUrl(room: string, tail: string): string {
    return `${this.options.base}/${tail}/${encodeURIComponent(room)}`;
  }

  subscribe(room: string, since: string | undefined): void {
    if (this.finished) return;
    const previous = this.streams.get(room);
    if (previous) {
      clearTimeout(previous.idle);
      previous.abort.abort();
    }
    const stream: Stream = { room, abort: new AbortController(), idle: undefined };
    this.streams.set(room, stream);
    void this.runStream(stream, since);
  }

  private current(stream: Stream): boolean {
    return !this.finished && !stream.abort.signal.aborted && this.streams.get(stream.room) === stream;
  }

  private armIdle(stream: Stream): void {
    if (stream.idle) clearTimeout(stream.idle);
    if (!this.current(stream)) return;
    stream.idle = setTimeout(() => {
      if (!this.current(stream)) return;
      this.options.debug(`SSE stream of ${stream.room} silent for ${this.options.idleTimeout} ms`);
      this.fail({ reason: "SSE stream idle" });
    }, this.options.idleTimeout);
  }

  private async runStream(stream: Stream, since: string | undefined): Promise<void> {
    const { room } = stream;
    const headers = this.headers({ accept: "text/event-stream" });
    if (since !== undefined) headers["last-event-id"] = since;
    const url = this.withUser(this.roomUrl(room, "sse/rooms"));
    this.armIdle(stream);
    let res: Response;
    try {
      res = await this.options.fetch(url, { headers, signal: stream.abort.signal });
    } catch (err) {
      if (this.current(stream)) this.fail({ reason: `SSE ${room}: ${(err as Error)?.message ?? err}` });
      return;
    }
    if (!this.current(stream)) {
      await res.body?.cancel().catch(() => {});
      return;
    }
    if (!res.ok || !res.body) {
      const error = await errorOf(res, room);
      if (!this.current(stream)) return;
      if (res.status === 401) {
        this.fail({ tokenExpired: true, reason: error.message });
      } else if (REQUEST_REFUSALS.has(res.status)) {
        clearTimeout(stream.idle);
        this.streams.delete(room);
        this.handler.subscribeFailed(room, error);
      } else {
        this.fail({ reason: `SSE ${room}: HTTP ${res.status} ${error.message}` });
      }
      return;
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser((name, data, id) => {
      if (this.current(stream)) this.onEvent(stream, name, data, id);
    });
    let tokenExpired = false;
    parser.onError = (code) => {
      if (code === "unauthorized") tokenExpired = true;
    };
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (!this.current(stream)) {
          await reader.cancel().catch(() => {});
          return;
        }
        if (done) break;
        this.armIdle(stream);
        parser.push(decoder.decode(value, { stream: true }));
      }
    } catch (err) {
      if (this.current(stream)) this.fail({ reason: `SSE ${room}: ${(err as Error)?.message ?? err}` });
      return;
    }
    // The server ended the stream (shutdown, token expiry, slow consumer).
    if (this.current(stream)) this.fail({ reason: `SSE stream of ${room} ended`, tokenExpired });
  }

  private onEvent(stream: Stream, name: string, data: string, _id: string | undefined): void {
    if (name === "heartbeat") return;
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(data) as Record<string, unknown>;
    } catch {
      this.options.debug(`SSE ${stream.room}: event ${name} without JSON data`);
      return;
    }
    switch (name) {
      case "subscribed":
        this.handler.subscribed(String(json.room ?? stream.room), String(json.cursor), json.recovered !== false);
        return;
      case "message":
      case "join":
      case "leave": {
        const event = toRoomEvent(json, name);
        if (event) this.handler.event(event);
        return;
      }
      case "error":
        // The last event of a stream the server ends (token expired, slow
        // consumer): the stream's end reconnects it.
        this.options.debug(`SSE ${stream.room}: error ${String(json.code)}: ${String(json.message)}`);
        return;
      default:
        this.options.debug(`SSE ${stream.room}: ignoring event ${name}`);
    }
  }

  unsubscribe(room: string): Promise<void> {
    const stream = this.streams.get(room);
    if (stream) {
      clearTimeout(stream.idle);
      stream.abort.abort();
      this.streams.delete(room);
    }
    return Promise.resolve();
  }

  publish(p: OutgoingPublish): void {
    this.publishes = this.publishes.then(() => this.postPublish(p));
  }

  private async postPublish(p: OutgoingPublish): Promise<void> {
    if (this.finished) return;
    const body: Record<string, unknown> = { id: p.id };
    if (p.text !== undefined) body.text = p.text;
    if (p.data !== undefined) body.data = p.data;
    let res: Response;
    try {
      res = await this.request(this.withUser(`${this.roomUrl(p.room, "api/rooms")}/messages`), {
        method: "POST",
        headers: this.headers({ "content-type": "application/json" }),
        body: JSON.stringify(body),
      });
    } catch {
      return; // The connection failed; the publish is resent on the next one.
    }
    if (res.status === 201 || res.ok) {
      const json = (await res.json().catch(() => ({}))) as Record<string, unknown>;
      if (this.finished) return;
      this.handler.ack(p.id, String(json.room ?? p.room), String(json.cursor), json.duplicate === true);
      return;
    }
    const error = await errorOf(res, p.room, p.id);
    if (this.finished) return;
    if (res.status === 401) {
      this.fail({ tokenExpired: true, reason: error.message });
      return;
    }
    if (res.status >= 500 && res.status !== 503) {
      this.fail({ reason: `publish: HTTP ${res.status}` });
      return;
    }
    this.handler.publishFailed(p.id, error);
  }

  /** One HTTP request of this connection; a network failure ends the connection. */
  private async request(url: string, init: RequestInit): Promise<Response> {
    if (this.finished) throw new ConnectionLost();
    const abort = new AbortController();
    this.requests.add(abort);
    const timer = setTimeout(() => abort.abort(), this.options.connectTimeout);
    try {
      return await this.options.fetch(url, { ...init, signal: abort.signal });
    } catch (err) {
      this.fail({ reason: `HTTP ${init.method ?? "GET"} ${url}: ${(err as Error)?.message ?? err}` });
      throw new ConnectionLost();
    } finally {
      clearTimeout(timer);
      this.requests.delete(abort);
    }
  }

  private async getJson(url: string, room: string): Promise<Record<string, unknown>> {
    const res = await this.request(this.withUser(url), { headers: this.headers({ accept: "application/json" }) });
    if (!res.ok) {
      const error = await errorOf(res, room);
      if (res.status === 401) {
        this.fail({ tokenExpired: true, reason: error.message });
        throw new ConnectionLost();
      }
      if (res.status >= 500 && res.status !== 503) {
        this.fail({ reason: `HTTP ${res.status}` });
        throw new ConnectionLost();
      }
      throw error;
    }
    return (await res.json()) as Record<string, unknown>;
  }

  async history(room: string, query: HistoryQuery): Promise<HistoryResult> {
    const params: Record<string, string | undefined> = {
      before: query.before,
      after: query.after,
      limit: query.limit === undefined ? undefined : String(query.limit),
    };
    const json = await this.getJson(withQuery(`${this.roomUrl(room, "api/rooms")}/messages`, params), room);
    const events = Array.isArray(json.events)
      ? (json.events as Record<string, unknown>[])
          .map((e) => toRoomEvent(e, String(e.type)))
          .filter((e): e is RoomEvent => e !== undefined)
      : [];
    return { room, events };
  }

  async presence(room: string): Promise<PresenceResult> {
    const json = await this.getJson(`${this.roomUrl(room, "api/rooms")}/presence`, room);
    return { room: String(json.room ?? room), users: Array.isArray(json.users) ? (json.users as string[]) : [] };
  }

  /**
   * Takes the new token for every later request; SSE clients refresh by
   * reopening their streams with it from their cursor (SPEC §7), which the
   * client does by subscribing each room again.
   */
  async refresh(token: string): Promise<number | undefined> {
    if (this.finished) throw new ConnectionLost();
    this.token = token;
    return jwtExp(token);
  }

  close(code?: number, reason?: string): void {
    this.probe?.abort();
    this.fail({ code, reason, local: true });
  }

  private fail(info: CloseInfo): void {
    if (this.finished) return;
    this.finished = true;
    if (!info.local) this.options.debug(`SSE/HTTP connection to ${this.url} ended: ${info.reason ?? ""}`);
    for (const stream of this.streams.values()) {
      clearTimeout(stream.idle);
      stream.abort.abort();
    }
    this.streams.clear();
    for (const abort of this.requests) abort.abort();
    this.requests.clear();
    this.resolveClosed(info);
  }
}

/** The `{"error":{"code","message"}}` of a refused request as an error. */
async function errorOf(res: Response, room: string, id?: string): Promise<SwitchboardError> {
  let code = res.status === 401 ? "unauthorized" : res.status === 403 ? "forbidden" : "unavailable";
  let message = `HTTP ${res.status}`;
  try {
    const json = (await res.json()) as { error?: { code?: unknown; message?: unknown } };
    if (json?.error && typeof json.error.code === "string") code = json.error.code;
    if (json?.error && typeof json.error.message === "string") message = json.error.message;
  } catch {
    // Not JSON (a proxy's page): keep the status.
  }
  return errorFromCode(code, message, { room, id, status: res.status });
}

/** An incremental `text/event-stream` parser (WHATWG HTML §9.2). */
export class SseParser {
  private buffer = "";
  private data: string[] = [];
  private event = "";
  private id: string | undefined;
  onError: ((code: string) => void) | undefined;

  constructor(private readonly dispatch: (event: string, data: string, id: string | undefined) => void) {}

  push(chunk: string): void {
    this.buffer += chunk;
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (!match) return;
      // A lone \r at the end may be the first half of \r\n.
      if (match[0] === "\r" && match.index === this.buffer.length - 1) return;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      this.line(line);
    }
  }

  private line(line: string): void {
    if (line === "") {
      if (this.data.length > 0) {
        const data = this.data.join("\n");
        const event = this.event || "message";
        if (event === "error" && this.onError) {
          try {
            const code = (JSON.parse(data) as { code?: unknown }).code;
            if (typeof code === "string") this.onError(code);
          } catch {
            // ignore
          }
        }
        this.dispatch(event, data, this.id);
      }
      this.data = [];
      this.event = "";
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "data":
        this.data.push(value);
        break;
      case "event":
        this.event = value;
        break;
      case "id":
        if (!value.includes("\0")) this.id = value;
        break;
      default:
        break; // retry and unknown fields
    }
  }
}
