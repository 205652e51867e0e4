/** A small typed event emitter (no dependency on Node's `events`). */

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Listener = (...args: any[]) => void;

export type Args<T> = T extends (...args: infer A) => void ? A : never;

function report(err: unknown): void {
  const g = globalThis as { reportError?: (e: unknown) => void };
  if (typeof g.reportError === "function") {
    g.reportError(err);
  } else {
    // Like a DOM event listener: the exception is not swallowed, and it
    // does not stop the other listeners or the client.
    setTimeout(() => {
      throw err;
    }, 0);
  }
}

export class Emitter<Events extends { [K in keyof Events]: Listener }> {
  private listeners = new Map<keyof Events, Set<Listener>>();

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(event: K, fn: Events[K]): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(fn);
    return () => this.off(event, fn);
  }

  /** Adds a listener called at most once. */
  once<K extends keyof Events>(event: K, fn: Events[K]): () => void {
    const wrapped = ((...args: unknown[]) => {
      off();
      (fn as Listener)(...args);
    }) as Events[K];
    const off = this.on(event, wrapped);
    return off;
  }

  off<K extends keyof Events>(event: K, fn: Events[K]): void {
    this.listeners.get(event)?.delete(fn);
  }

  /** @internal */
  protected emit<K extends keyof Events>(event: K, ...args: Args<Events[K]>): void {
    const set = this.listeners.get(event);
    if (!set || set.size === 0) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (err) {
        report(err);
      }
    }
  }

  /** @internal */
  protected listenerCount<K extends keyof Events>(event: K): number {
    return this.listeners.get(event)?.size ?? 0;
  }
}
