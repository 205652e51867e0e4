/** What the client core needs of a transport (internal). */
import type { SwitchboardError } from "./errors.js";
import type { HistoryQuery, HistoryResult, PresenceResult, RoomEvent, TransportKind } from "./types.js";

/** A request could not complete because its connection went away: retry on the next one. */
export class ConnectionLost extends Error {
  constructor(message = "connection lost") {
    super(message);
    this.name = "ConnectionLost";
  }
}

export interface CloseInfo {
  code?: number;
  reason?: string;
  /** The server refused the token (4001, HTTP 401): get a new one before reconnecting. */
  tokenExpired?: boolean;
  /** Do not reconnect (4003). */
  fatal?: SwitchboardError;
  /** `close()` of this side. */
  local?: boolean;
}

/** Callbacks of one connection into the client; called only while it is open. */
export interface ConnectionHandler {
  subscribed(room: string, cursor: string, recovered: boolean): void;
  subscribeFailed(room: string, error: SwitchboardError): void;
  event(event: RoomEvent): void;
  ack(id: string, room: string, cursor: string, duplicate: boolean): void;
  publishFailed(id: string, error: SwitchboardError): void;
  /** The server unsubscribed the connection from a room (a refresh that no longer allows it). */
  roomDropped(room: string, error: SwitchboardError): void;
  /** An error frame that answers no request. */
  unsolicited(error: SwitchboardError): void;
}

export interface OutgoingPublish {
  id: string;
  room: string;
  text?: string;
  data?: unknown;
}

export interface Connection {
  readonly kind: TransportKind;
  /** The URL this connection uses (WebSocket URL, or SSE/HTTP base). */
  readonly url: string;
  /** Resolves once, when the connection ends (after `open()` resolved). */
  readonly closed: Promise<CloseInfo>;
  /** Resolves once usable; `probeRoom`: a room the application uses, for transports that probe. */
  open(probeRoom?: string): Promise<void>;
  subscribe(room: string, since: string | undefined): void;
  unsubscribe(room: string): Promise<void>;
  publish(publish: OutgoingPublish): void;
  history(room: string, query: HistoryQuery): Promise<HistoryResult>;
  presence(room: string): Promise<PresenceResult>;
  /** Replaces the credentials; resolves with the new `exp`. */
  refresh(token: string): Promise<number | undefined>;
  close(code?: number, reason?: string): void;
}

/** Normalises a delivered event: the SSE data and HTTP history carry the kind elsewhere. */
export function toRoomEvent(raw: Record<string, unknown>, type: string): RoomEvent | undefined {
  if (typeof raw.room !== "string" || typeof raw.cursor !== "string") return undefined;
  if (type !== "message" && type !== "join" && type !== "leave") return undefined;
  return { ...raw, type } as RoomEvent;
}
