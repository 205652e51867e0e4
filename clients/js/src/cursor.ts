/**
 * Cursors are `<epoch>:<offset>` (SPEC §2). Applications treat them as
 * opaque; the client reads them only to drop events it already delivered.
 */
export interface ParsedCursor {
  epoch: string;
  offset: number;
}

export function parseCursor(cursor: string | undefined | null): ParsedCursor | undefined {
  if (typeof cursor !== "string") return undefined;
  const at = cursor.lastIndexOf(":");
  if (at <= 0) return undefined;
  const offset = Number(cursor.slice(at + 1));
  if (!Number.isSafeInteger(offset) || offset < 0) return undefined;
  return { epoch: cursor.slice(0, at), offset };
}

/**
 * Whether an event at `cursor` comes after `last` (the last position
 * delivered): same epoch and a larger offset, or another epoch (the room
 * log was recreated, so everything in it is new).
 */
export function isAfter(cursor: string, last: string | undefined): boolean {
  if (last === undefined) return true;
  const c = parseCursor(cursor);
  const l = parseCursor(last);
  if (!c || !l) return cursor !== last;
  if (c.epoch !== l.epoch) return true;
  return c.offset > l.offset;
}
