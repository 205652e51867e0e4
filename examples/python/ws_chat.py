#!/usr/bin/env python3
"""A terminal chat over Switchboard's WebSocket protocol (SPEC §3), with
the `websockets` package.

Lines read from stdin are published to the room; the room's events are
printed as they arrive. The client survives restarts and network cuts: it
reconnects with exponential backoff and jitter, subscribes again with
`since` = the cursor of the last event it printed (so the server replays
exactly what it missed, without gaps or duplicates), and sends again every
publish that was not acknowledged yet, with the same id (so a publish that
was stored before the connection broke is not stored twice).

    python ws_chat.py ws://localhost:8080/ws --room lobby --user alice
    echo "deploy finished" | python ws_chat.py http://localhost:8080 --room ops --user ci

Options: `--since CURSOR` starts from a cursor you saw; `--json` prints the
server's frames as JSON lines (events, `ack`, `subscribed`, `error`) instead
of `user: text`; `--count N` exits once N messages were printed and every
publish was acknowledged; without `--count` the client exits when stdin ends
and its publishes are acknowledged (`--listen`: it keeps reading the room
until interrupted). `--token JWT` (or `SWITCHBOARD_TOKEN`)
for servers with JWT auth.

Exit status: 0 done, 1 the server ended the session (close 4001 token
expired, 4003 disconnected) or refused the room, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import threading
import uuid
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

SUBPROTOCOL = "switchboard.v1.json"
#: Refusals of a publish that a later retry may get past.
TRANSIENT = {"rate_limited", "unavailable"}
#: Close codes after which reconnecting cannot help (no token provider here).
FATAL_CLOSE = {4001: "token expired", 4003: "disconnected by the server"}


def ws_url(url: str, user: str | None, token: str | None) -> str:
    """`ws://host/ws` from a base HTTP URL or a WebSocket URL (SPEC §14),
    with `?user=` (anonymous) or `?access_token=`."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if not path.endswith("/ws"):
        path += "/ws"
    query = {"access_token": token} if token else ({"user": user} if user else {})
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


class Chat:
    def __init__(self, url: str, room: str, *, since: str | None, json_out: bool,
                 count: int | None, max_backoff: float, listen: bool = False):
        self.url = url
        self.room = room
        self.cursor = since  # last event printed (or where live delivery began)
        self.json_out = json_out
        self.count = count
        self.max_backoff = max_backoff
        self.listen = listen
        self.client_id = uuid.uuid4().hex[:12]
        self.seq = 0
        self.pending: dict[str, str] = {}  # publish id -> text, in send order
        # Own publishes acknowledged but not yet delivered back (an ack may
        # come before or after the room's copy of the message).
        self.unechoed: set[str] = set()
        self.echoed: set[str] = set()
        self.printed = 0
        self.stdin_done = False
        self.ws = None
        self.subscribed = False
        self.finished = asyncio.Event()
        self.exit_code = 0

    # -- output ----------------------------------------------------------
    def emit(self, frame: dict, human: str | None) -> None:
        if self.json_out:
            print(json.dumps(frame, separators=(",", ":")), flush=True)
        elif human is not None:
            print(human, flush=True)

    def note(self, text: str) -> None:
        print(f"[ws_chat] {text}", file=sys.stderr, flush=True)

    # -- publishing ------------------------------------------------------
    async def submit(self, text: str) -> None:
        """Queues a line; it is sent now if subscribed, else after the next
        (re)subscription, and kept until acknowledged."""
        self.seq += 1
        publish_id = f"{self.client_id}-{self.seq}"
        self.pending[publish_id] = text
        if self.subscribed:
            await self.send_publish(publish_id)

    async def send_publish(self, publish_id: str) -> None:
        ws, text = self.ws, self.pending.get(publish_id)
        if ws is None or text is None:
            return
        try:
            await ws.send(json.dumps({"type": "publish", "room": self.room,
                                      "text": text, "id": publish_id}))
        except ConnectionClosed:
            pass  # resent after the reconnect

    async def send_subscribe(self) -> None:
        """Subscribes from our cursor: the server replays what followed it."""
        subscribe = {"type": "subscribe", "room": self.room}
        if self.cursor is not None:
            subscribe["since"] = self.cursor
        if self.ws is not None:
            await self.ws.send(json.dumps(subscribe))

    def check_done(self) -> None:
        if self.pending or self.unechoed:
            return
        if (self.count is not None and self.printed >= self.count) or \
                (self.count is None and self.stdin_done and not self.listen):
            self.finished.set()

    # -- receiving -------------------------------------------------------
    async def handle(self, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "subscribed":
            # With `since`, the replay follows this frame: keep our cursor
            # until its events arrive (adopting the head now would skip them
            # if the connection broke mid-replay). Without one, or when the
            # server could not replay (`recovered: false`), live delivery
            # starts at the head.
            if self.cursor is None or not frame.get("recovered", True):
                self.unechoed.clear()  # what was missed will not come
                if self.cursor is not None:
                    self.note(f"missed events of {self.room}: history no longer covers "
                              f"{self.cursor}; live again from {frame['cursor']}")
                self.cursor = frame["cursor"]
            self.subscribed = True
            self.emit(frame, None)
            self.note(f"subscribed to {self.room} at {frame['cursor']}")
            for publish_id in list(self.pending):
                await self.send_publish(publish_id)
        elif kind in ("message", "join", "leave"):
            self.cursor = frame["cursor"]
            if kind == "message":
                self.printed += 1
                if frame.get("id", "").startswith(self.client_id + "-"):
                    self.echoed.add(frame["id"])
                    self.unechoed.discard(frame["id"])
                self.emit(frame, f"{frame.get('user')}: {frame.get('text', '')}")
            else:
                self.emit(frame, f"* {frame.get('user')} {'joined' if kind == 'join' else 'left'}")
            self.check_done()
        elif kind == "ack":
            publish_id = frame.get("id")
            if self.pending.pop(publish_id, None) is not None:
                self.emit(frame, None)
                if publish_id not in self.echoed:
                    self.unechoed.add(publish_id)
            self.check_done()
        elif kind == "error":
            await self.handle_error(frame)
        elif kind == "pong":
            pass
        else:
            self.emit(frame, None)

    async def handle_error(self, frame: dict) -> None:
        self.emit(frame, None)
        code, publish_id = frame.get("code"), frame.get("id")
        if publish_id in self.pending:
            if code in TRANSIENT:
                await asyncio.sleep(random.uniform(0.2, 0.5))
                await self.send_publish(publish_id)
            else:
                self.note(f"publish {publish_id} refused: {code}: {frame.get('message')}")
                del self.pending[publish_id]
                self.check_done()
        elif not self.subscribed and code in TRANSIENT:
            # E.g. a gateway that just started and is not connected to the
            # core yet (its /readyz is still false): ask again shortly.
            self.note(f"subscribe refused for now ({code}); retrying")
            await asyncio.sleep(random.uniform(0.2, 1.0))
            await self.send_subscribe()
        elif not self.subscribed and code in ("invalid_room", "forbidden", "unauthorized", "bad_frame"):
            self.note(f"cannot subscribe to {self.room}: {code}: {frame.get('message')}")
            self.exit_code = 1
            self.finished.set()
        else:
            self.note(f"error {code}: {frame.get('message')}")

    # -- the connection loop ---------------------------------------------
    async def run(self) -> None:
        failures = 0
        while not self.finished.is_set():
            try:
                async with connect(self.url, subprotocols=[SUBPROTOCOL], open_timeout=5,
                                   ping_interval=20, ping_timeout=20,
                                   close_timeout=2) as ws:
                    self.ws = ws
                    failures = 0
                    await self.send_subscribe()
                    async for raw in ws:
                        await self.handle(json.loads(raw))
                        if self.finished.is_set():
                            return
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
                if code in FATAL_CLOSE:
                    self.note(f"connection closed {code}: {FATAL_CLOSE[code]}")
                    self.exit_code = 1
                    return
                self.note(f"connection lost (close {code}); reconnecting")
            except (OSError, InvalidHandshake, TimeoutError) as err:
                self.note(f"cannot connect: {err!r}")
            finally:
                self.ws = None
                self.subscribed = False
            # Full jitter over an exponentially growing window.
            failures += 1
            window = min(self.max_backoff, 0.1 * 2 ** failures)
            try:
                await asyncio.wait_for(self.finished.wait(), random.uniform(0, window))
            except TimeoutError:
                pass


def read_stdin(loop: asyncio.AbstractEventLoop, chat: Chat) -> None:
    """stdin lines, read on a thread (works for pipes, files and terminals)."""
    def eof() -> None:
        chat.stdin_done = True
        chat.check_done()

    try:
        for line in sys.stdin:
            line = line.rstrip("\n")
            if line:
                asyncio.run_coroutine_threadsafe(chat.submit(line), loop).result()
        loop.call_soon_threadsafe(eof)
    except RuntimeError:
        pass  # the loop is closed: the chat ended first


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="ws://host:8080/ws or http://host:8080")
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--user", help="anonymous user name (servers without JWT)")
    parser.add_argument("--token", default=os.environ.get("SWITCHBOARD_TOKEN"))
    parser.add_argument("--since", help="resume after this cursor")
    parser.add_argument("--json", action="store_true", help="print frames as JSON lines")
    parser.add_argument("--count", type=int, help="exit after N messages")
    parser.add_argument("--listen", action="store_true",
                        help="keep reading the room after stdin ends")
    parser.add_argument("--max-backoff", type=float, default=5.0, help="seconds")
    args = parser.parse_args(argv)

    chat = Chat(ws_url(args.url, args.user, args.token), args.room, since=args.since,
                json_out=args.json, count=args.count, max_backoff=args.max_backoff,
                listen=args.listen)
    loop = asyncio.get_running_loop()
    threading.Thread(target=read_stdin, args=(loop, chat), daemon=True).start()
    runner = asyncio.create_task(chat.run())
    done = asyncio.create_task(chat.finished.wait())
    await asyncio.wait({runner, done}, return_when=asyncio.FIRST_COMPLETED)
    for task in (runner, done):
        task.cancel()
    if runner.done() and not runner.cancelled() and runner.exception() is not None:
        raise runner.exception()
    return chat.exit_code


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)
