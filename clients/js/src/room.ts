import { Emitter, type Args } from "./emitter.js";
import type {
  HistoryQuery,
  HistoryResult,
  PresenceResult,
  PublishInput,
  PublishResult,
  RoomEvent,
  RoomEvents,
  SubscribeOptions,
  SubscribeResult,
} from "./types.js";
import type { Connection } from "./transport.js";

/** What a room asks of its client (internal). */
export interface RoomHost {
  subscribeRoom(room: Room, options: SubscribeOptions | undefined): Promise<SubscribeResult>;
  unsubscribeRoom(room: Room): Promise<void>;
  publishTo(room: string, input: PublishInput): Promise<PublishResult>;
  historyOf(room: string, query: HistoryQuery): Promise<HistoryResult>;
  presenceOf(room: string): Promise<PresenceResult>;
}

interface Waiter {
  resolve: (r: SubscribeResult) => void;
  reject: (e: Error) => void;
}

/**
 * One room of a {@link Switchboard} client: `sb.room(name)` returns the same
 * object for the same name.
 */
export class Room extends Emitter<RoomEvents> {
  readonly name: string;

  /** @internal Whether the application wants the room subscribed. */
  _wanted = false;
  /** @internal Last delivered position: events at or before it are dropped. */
  _cursor: string | undefined;
  /** @internal `since` of the first subscription (from `sb.room(name, { since })`). */
  _initialSince: string | undefined;
  /** @internal The connection a subscribe was sent on, and its `since`. */
  _sentOn: Connection | null = null;
  _sentSince: string | undefined;
  /** @internal The connection whose `subscribed` made the room live. */
  _liveOn: Connection | null = null;
  /** @internal */
  _everSubscribed = false;
  /** @internal */
  _waiters: Waiter[] = [];

  constructor(
    name: string,
    private readonly host: RoomHost,
    since: string | undefined,
  ) {
    super();
    this.name = name;
    this._initialSince = since;
  }

  /** The cursor of the last event delivered (or where live delivery started), if any. */
  get cursor(): string | undefined {
    return this._cursor;
  }

  /** True while the room is subscribed on the current connection. */
  get subscribed(): boolean {
    return this._wanted && this._liveOn !== null;
  }

  /**
   * Subscribes (and keeps the room subscribed across reconnects, resuming
   * from the last delivered cursor). Resolves on the first `subscribed`.
   */
  subscribe(options?: SubscribeOptions): Promise<SubscribeResult> {
    return this.host.subscribeRoom(this, options);
  }

  /** Stops receiving the room. The last cursor is kept: a later `subscribe()` resumes from it. */
  unsubscribe(): Promise<void> {
    return this.host.unsubscribeRoom(this);
  }

  /** Publishes with an automatic idempotency id; retried across reconnects until acknowledged. */
  publish(input: PublishInput | string): Promise<PublishResult> {
    return this.host.publishTo(this.name, typeof input === "string" ? { text: input } : input);
  }

  /** One page of history, oldest first. */
  history(query: HistoryQuery = {}): Promise<HistoryResult> {
    return this.host.historyOf(this.name, query);
  }

  /**
   * Pages backwards through history: yields pages (each oldest first),
   * newest page first, until the retained history is exhausted.
   */
  async *historyPages(query: { before?: string; limit?: number } = {}): AsyncGenerator<RoomEvent[], void, undefined> {
    const limit = query.limit ?? 50;
    let before = query.before;
    for (;;) {
      const { events } = await this.history(before === undefined ? { limit } : { before, limit });
      if (events.length === 0) return;
      yield events;
      if (events.length < limit) return;
      before = events[0]!.cursor;
    }
  }

  /** Users in the room now. */
  presence(): Promise<PresenceResult> {
    return this.host.presenceOf(this.name);
  }

  /** @internal */
  _emit<K extends keyof RoomEvents>(event: K, ...args: Args<RoomEvents[K]>): void {
    this.emit(event, ...args);
  }

  /** @internal */
  _hasListeners(event: keyof RoomEvents): boolean {
    return this.listenerCount(event) > 0;
  }
}
