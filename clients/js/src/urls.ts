/**
 * Endpoint derivation (SPEC §14): a URL is either a WebSocket URL
 * (`ws(s)://host/ws`) or a base HTTP URL (`http(s)://host[/prefix]`); the
 * WebSocket, SSE and HTTP API endpoints all come from the same host.
 */
export interface Endpoint {
  /** As given. */
  input: string;
  /** `ws(s)://host[/prefix]/ws` */
  ws: string;
  /** `http(s)://host[/prefix]` (no trailing slash): SSE and HTTP API base. */
  http: string;
}

export function endpointOf(input: string): Endpoint {
  let url: URL;
  try {
    url = new URL(input);
  } catch {
    throw new TypeError(`invalid Switchboard URL ${JSON.stringify(input)}: expected ws(s)://host/ws or http(s)://host`);
  }
  const proto = url.protocol;
  let path = url.pathname.replace(/\/+$/, "");
  if (proto === "ws:" || proto === "wss:") {
    // ws://host/ws, ws://host/prefix/ws; anything else is taken as a base.
    const base = path.endsWith("/ws") ? path.slice(0, -3) : path;
    const httpProto = proto === "wss:" ? "https:" : "http:";
    const ws = `${proto}//${url.host}${path.endsWith("/ws") ? path : `${path}/ws`}`;
    return { input, ws, http: `${httpProto}//${url.host}${base}` };
  }
  if (proto === "http:" || proto === "https:") {
    if (path.endsWith("/ws")) path = path.slice(0, -3);
    const wsProto = proto === "https:" ? "wss:" : "ws:";
    return { input, ws: `${wsProto}//${url.host}${path}/ws`, http: `${proto}//${url.host}${path}` };
  }
  throw new TypeError(`invalid Switchboard URL ${JSON.stringify(input)}: the scheme must be ws, wss, http or https`);
}

/** Appends query parameters to a URL string. */
export function withQuery(url: string, params: Record<string, string | undefined>): string {
  const u = new URL(url);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined) u.searchParams.set(k, v);
  }
  return u.toString();
}
