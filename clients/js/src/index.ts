/**
 * `@switchboard/client`: the JavaScript/TypeScript client of Switchboard.
 *
 * ```js
 * import { Switchboard } from "@switchboard/client";
 * const sb = new Switchboard({ urls: ["ws://a:8080/ws", "ws://b:8080/ws"], token: async () => jwt });
 * const room = sb.room("lobby");
 * room.on("message", (e) => console.log(e.user, e.text));
 * await room.subscribe();
 * await room.publish({ text: "hi" });
 * ```
 */
export { Switchboard } from "./client.js";
export { Room } from "./room.js";
export {
  SwitchboardError,
  BadFrameError,
  InvalidRoomError,
  TooLargeError,
  RateLimitedError,
  UnauthorizedError,
  ForbiddenError,
  NotSubscribedError,
  UnavailableError,
  QueueFullError,
  RequestTimeoutError,
  ClosedError,
  DisconnectedError,
  TransportError,
  errorFromCode,
  SERVER_ERROR_CODES,
} from "./errors.js";
export type { ErrorCode, ServerErrorCode, ClientErrorCode, SwitchboardErrorDetails } from "./errors.js";
export { endpointOf } from "./urls.js";
export type { Endpoint } from "./urls.js";
export { jwtExp } from "./jwt.js";
export type {
  State,
  StateInfo,
  TransportKind,
  MessageEvent,
  PresenceEvent,
  RoomEvent,
  RecoveredEvent,
  SubscribedEvent,
  SubscribeResult,
  SubscribeOptions,
  PublishInput,
  PublishResult,
  HistoryQuery,
  HistoryResult,
  PresenceResult,
  WebSocketLike,
  WebSocketConstructor,
  TokenProvider,
  ReconnectOptions,
  SwitchboardOptions,
  ClientEvents,
  RoomEvents,
} from "./types.js";
