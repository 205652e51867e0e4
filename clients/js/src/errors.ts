/**
 * Errors of the Switchboard client.
 *
 * Every error the SDK rejects with or emits is a {@link SwitchboardError}
 * with a `code`. Codes the server sends (SPEC §3/§4: `bad_frame`,
 * `invalid_room`, `too_large`, `rate_limited`, `unauthorized`, `forbidden`,
 * `not_subscribed`, `unavailable`) each have a subclass; the client adds
 * its own codes for what only it can decide (`queue_full`, `timeout`,
 * `closed`, `disconnected`, `transport`).
 */

/** Error codes sent by the server, identical on every transport. */
export type ServerErrorCode =
  | "bad_frame"
  | "invalid_room"
  | "too_large"
  | "rate_limited"
  | "unauthorized"
  | "forbidden"
  | "not_subscribed"
  | "unavailable";

/** Error codes decided by the client. */
export type ClientErrorCode =
  /** The queue of unacknowledged publishes is full (option `maxPendingPublishes`). */
  | "queue_full"
  /** A request was not answered in time (option `requestTimeout` / `publishTimeout`). */
  | "timeout"
  /** `close()` was called. */
  | "closed"
  /** The server ended the session for good (close code 4003) or a fatal auth failure. */
  | "disconnected"
  /** No transport can be used (e.g. no WebSocket constructor and SSE disabled). */
  | "transport";

export type ErrorCode = ServerErrorCode | ClientErrorCode;

export const SERVER_ERROR_CODES: readonly ServerErrorCode[] = [
  "bad_frame",
  "invalid_room",
  "too_large",
  "rate_limited",
  "unauthorized",
  "forbidden",
  "not_subscribed",
  "unavailable",
];

export interface SwitchboardErrorDetails {
  /** The room the failed request was about, when known. */
  room?: string;
  /** The publish id, for publish errors. */
  id?: string;
  /** HTTP status, for errors of the HTTP API / SSE transport. */
  status?: number;
  /** WebSocket close code, for errors caused by a close. */
  closeCode?: number;
  cause?: unknown;
}

/** Base class of every error of the SDK. */
export class SwitchboardError extends Error {
  readonly code: ErrorCode;
  readonly room: string | undefined;
  readonly id: string | undefined;
  readonly status: number | undefined;
  readonly closeCode: number | undefined;

  constructor(code: ErrorCode, message: string, details: SwitchboardErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "SwitchboardError";
    this.code = code;
    this.room = details.room;
    this.id = details.id;
    this.status = details.status;
    this.closeCode = details.closeCode;
  }
}

export class BadFrameError extends SwitchboardError {
  constructor(message: string, details?: SwitchboardErrorDetails) {
    super("bad_frame", message, details);
    this.name = "BadFrameError";
  }
}
export class InvalidRoomError extends SwitchboardError {
  constructor(message: string, details?: SwitchboardErrorDetails) {
    super("invalid_room", message, details);
    this.name = "InvalidRoomError";
  }
}
export class TooLargeError extends SwitchboardError {
  constructor(message: string, details?: SwitchboardErrorDetails) {
    super("too_large", message, details);
    this.name = "TooLargeError";
  }
}
export class RateLimitedError extends SwitchboardError {
  constructor(message: string, details?: SwitchboardErrorDetails) {
    super("rate_limited", message, details);
    this.name = "RateLimitedError";
  }
}
export class UnauthorizedError extends SwitchboardError {
  constructor(message: string, details?: SwitchboardErrorDetails) {
    super("unauthorized", message, details);
    this.name = "UnauthorizedError";
  }
}
export class ForbiddenError extends SwitchboardError {
  constructor(message: string, details?: SwitchboardErrorDetails) {
    super("forbidden", message, details);
    this.name = "ForbiddenError";
  }
}
export class NotSubscribedError extends SwitchboardError {
  constructor(message: string, details?: SwitchboardErrorDetails) {
    super("not_subscribed", message, details);
    this.name = "NotSubscribedError";
  }
}
export class UnavailableError extends SwitchboardError {
  constructor(message: string, details?: SwitchboardErrorDetails) {
    super("unavailable", message, details);
    this.name = "UnavailableError";
  }
}
export class QueueFullError extends SwitchboardError {
  constructor(message: string, details?: SwitchboardErrorDetails) {
    super("queue_full", message, details);
    this.name = "QueueFullError";
  }
}
export class RequestTimeoutError extends SwitchboardError {
  constructor(message: string, details?: SwitchboardErrorDetails) {
    super("timeout", message, details);
    this.name = "RequestTimeoutError";
  }
}
export class ClosedError extends SwitchboardError {
  constructor(message: string, details?: SwitchboardErrorDetails) {
    super("closed", message, details);
    this.name = "ClosedError";
  }
}
export class DisconnectedError extends SwitchboardError {
  constructor(message: string, details?: SwitchboardErrorDetails) {
    super("disconnected", message, details);
    this.name = "DisconnectedError";
  }
}
export class TransportError extends SwitchboardError {
  constructor(message: string, details?: SwitchboardErrorDetails) {
    super("transport", message, details);
    this.name = "TransportError";
  }
}

const BY_CODE: Record<ErrorCode, new (message: string, details?: SwitchboardErrorDetails) => SwitchboardError> = {
  bad_frame: BadFrameError,
  invalid_room: InvalidRoomError,
  too_large: TooLargeError,
  rate_limited: RateLimitedError,
  unauthorized: UnauthorizedError,
  forbidden: ForbiddenError,
  not_subscribed: NotSubscribedError,
  unavailable: UnavailableError,
  queue_full: QueueFullError,
  timeout: RequestTimeoutError,
  closed: ClosedError,
  disconnected: DisconnectedError,
  transport: TransportError,
};

/**
 * The error class of `code`. An unknown code (a newer server) becomes a
 * plain {@link SwitchboardError} that keeps the code as sent.
 */
export function errorFromCode(code: string, message: string, details?: SwitchboardErrorDetails): SwitchboardError {
  const Ctor = (BY_CODE as Record<string, (typeof BY_CODE)[ErrorCode] | undefined>)[code];
  if (Ctor) return new Ctor(message, details);
  return new SwitchboardError(code as ErrorCode, message, details);
}
