// Test harness: the real `switchboard` binary on loopback ports, the
// examples as child processes whose JSON lines are collected, a WebSocket
// subscriber that records a room, and proxies that cut connections or lose
// replies. Every wait is bounded; every child is killed when the test
// process exits, whatever the outcome.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

const here = path.dirname(fileURLToPath(import.meta.url));
export const EXAMPLES = path.resolve(here, "..");
export const REPO = path.resolve(here, "../../..");
export const WAIT = 20_000;

const children = new Set();
function killAll() {
  for (const child of children) {
    try {
      child.kill("SIGKILL");
    } catch {
      // gone already
    }
  }
  children.clear();
}
process.on("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    killAll();
    process.exit(130);
  });
}

export function switchboardBin() {
  let bin = process.env.SWITCHBOARD_BIN || "target/debug/switchboard";
  if (!path.isAbsolute(bin)) bin = path.resolve(REPO, bin);
  if (!existsSync(bin)) {
    throw new Error(`switchboard binary not found at ${bin}: cargo build -p switchboard --bin switchboard, or set SWITCHBOARD_BIN`);
  }
  return bin;
}

/** Resolves with `value` of the first truthy `check()`, polled; rejects after `timeout`. */
export async function waitFor(check, what, { timeout = WAIT, interval = 20 } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

/** A child process whose stdout and stderr lines are collected. */
export class Child {
  constructor(name, command, args, { env = {}, cwd = EXAMPLES } = {}) {
    this.name = name;
    this.stdout = [];
    this.stderr = [];
    this.exit = null;
    this.proc = spawn(command, args, { cwd, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    children.add(this.proc);
    this.exited = new Promise((resolve) => {
      this.proc.once("close", (code, signal) => {
        this.exit = { code, signal };
        children.delete(this.proc);
        resolve(this.exit);
      });
    });
    for (const [stream, sink] of [
      [this.proc.stdout, this.stdout],
      [this.proc.stderr, this.stderr],
    ]) {
      let buffered = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        buffered += chunk;
        let nl;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          sink.push(line);
          if (process.env.SWITCHBOARD_TEST_LOGS) process.stderr.write(`[${name}] ${line}\n`);
        }
      });
    }
  }

  jsonLines() {
    return this.stdout.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
  }

  /** The first stdout JSON line matching `predicate`. */
  waitJson(predicate, what, timeout = WAIT) {
    return waitFor(
      () => {
        const found = this.jsonLines().find(predicate);
        if (!found && this.exit) throw new Error(`${this.name} exited ${JSON.stringify(this.exit)} before ${what}:\n${this.logs()}`);
        return found;
      },
      `${this.name}: ${what}`,
      { timeout },
    ).catch((err) => {
      throw new Error(`${err.message}\n${this.logs()}`);
    });
  }

  waitStderr(predicate, what, timeout = WAIT) {
    return waitFor(() => this.stderr.find(predicate), `${this.name} stderr: ${what}`, { timeout });
  }

  async waitExit(timeout = WAIT) {
    let timer;
    const limit = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${this.name} did not exit in ${timeout} ms:\n${this.logs()}`)), timeout);
    });
    try {
      return await Promise.race([this.exited, limit]);
    } finally {
      clearTimeout(timer);
    }
  }

  async kill() {
    if (!this.exit) {
      this.proc.kill("SIGKILL");
      await this.waitExit(10_000);
    }
  }

  logs() {
    return [...this.stdout.slice(-40).map((l) => `stdout: ${l}`), ...this.stderr.slice(-40).map((l) => `stderr: ${l}`)].join("\n");
  }
}

/** `node examples/node/<script> args…` */
export function example(name, script, args = [], options = {}) {
  return new Child(name, process.execPath, [path.join(EXAMPLES, script), ...args], options);
}

/** `switchboard standalone` on loopback, once it logged "switchboard listening". */
export async function startSwitchboard(extra = []) {
  const child = new Child(
    "switchboard",
    switchboardBin(),
    ["standalone", "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--log-format", "json", ...extra],
    { env: { RUST_LOG: "info" }, cwd: REPO },
  );
  const line = await waitFor(
    () => {
      if (child.exit) throw new Error(`switchboard exited before listening:\n${child.logs()}`);
      return child.stderr.find((l) => l.includes("switchboard listening"));
    },
    '"switchboard listening"',
    { timeout: 30_000 },
  );
  const log = JSON.parse(line);
  return {
    child,
    http: `http://${log.http_addr}`,
    ws: `ws://${log.http_addr}/ws`,
    httpAddr: log.http_addr,
    grpcAddr: log.grpc_addr,
    stop: () => child.kill(),
  };
}

let roomSeq = 0;
export const freshRoom = () => `ex-${process.pid}-${Date.now().toString(36)}-${++roomSeq}`;

export async function publish(base, room, text, { id, user = "tester" } = {}) {
  const response = await fetch(`${base}/api/rooms/${room}/messages?user=${user}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(id ? { text, id } : { text }),
    signal: AbortSignal.timeout(10_000),
  });
  const body = await response.json();
  if (response.status !== 201) throw new Error(`publish ${response.status}: ${JSON.stringify(body)}`);
  return body;
}

export async function history(base, room) {
  const response = await fetch(`${base}/api/rooms/${room}/messages?limit=1000`, { signal: AbortSignal.timeout(10_000) });
  return (await response.json()).events;
}

/** A plain WebSocket subscriber of one room, recording every frame. */
export async function wsSubscriber(wsUrl, room, user = "watcher") {
  const ws = new WebSocket(`${wsUrl}?user=${user}`, "switchboard.v1.json");
  const frames = [];
  ws.on("message", (data) => frames.push(JSON.parse(data.toString())));
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("WebSocket subscriber did not open")), WAIT);
    ws.once("open", () => (clearTimeout(timer), resolve()));
    ws.once("error", (err) => (clearTimeout(timer), reject(err)));
  });
  ws.send(JSON.stringify({ type: "subscribe", room }));
  const sub = {
    frames,
    messages: () => frames.filter((f) => f.type === "message"),
    waitFor: (predicate, what) => waitFor(() => frames.find(predicate), `subscriber of ${room}: ${what}`),
    waitText: (text) => sub.waitFor((f) => f.type === "message" && f.text === text, `message ${text}`),
    close: () => ws.terminate(),
  };
  await sub.waitFor((f) => f.type === "subscribed", "subscribed");
  return sub;
}

/** A TCP proxy to `target` ("host:port") that can cut every connection
 * and refuse new ones while `refusing`. */
export async function tcpProxy(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  const sockets = new Set();
  const proxy = { refusing: false, accepted: 0 };
  const server = net.createServer((client) => {
    if (proxy.refusing) return client.destroy();
    proxy.accepted++;
    const upstream = net.connect(port, host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream).pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  proxy.addr = `127.0.0.1:${server.address().port}`;
  proxy.cut = () => {
    for (const s of sockets) s.resetAndDestroy ? s.resetAndDestroy() : s.destroy();
  };
  proxy.close = () => {
    proxy.cut();
    return new Promise((resolve) => server.close(resolve));
  };
  return proxy;
}

/** An HTTP proxy to `upstream` that, after `loseReplies(n)`, forwards the
 * next n POSTs and then drops their connection without an answer. */
export async function lossyHttpProxy(upstream) {
  const proxy = { forwardedPosts: 0, toLose: 0 };
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const headers = { ...req.headers };
    delete headers.host;
    delete headers.connection;
    delete headers["content-length"];
    const reply = await fetch(upstream + req.url, {
      method: req.method,
      headers,
      body: req.method === "POST" ? Buffer.concat(chunks) : undefined,
    });
    const body = Buffer.from(await reply.arrayBuffer());
    if (req.method === "POST") {
      proxy.forwardedPosts++;
      if (proxy.toLose > 0) {
        proxy.toLose--;
        return req.socket.destroy();
      }
    }
    res.writeHead(reply.status, { "content-type": reply.headers.get("content-type") ?? "application/json" });
    res.end(body);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  proxy.url = `http://127.0.0.1:${server.address().port}`;
  proxy.loseReplies = (n) => (proxy.toLose = n);
  proxy.close = () => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(resolve));
  };
  return proxy;
}
