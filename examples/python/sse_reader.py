#!/usr/bin/env python3
"""Read a Switchboard room as Server-Sent Events (SPEC §4) with `httpx`.

`GET /sse/rooms/{room}` streams `text/event-stream`; every event's `id:` is
its cursor. When the stream breaks (a restart, a proxy timeout, a network
cut) the reader waits the server's `retry:` delay and reconnects with
`Last-Event-ID` = the cursor of the last event it printed, as a browser's
`EventSource` does: the server replays what was missed, then goes live, so
nothing is lost or printed twice.

    python sse_reader.py http://localhost:8080 --room lobby --user carol
    python sse_reader.py http://localhost:8080 --room lobby --last-event-id 'k2p9:41' --json

`--json` prints each event's JSON (with its SSE event name as `type`),
`--count N` exits after N messages, `--token JWT` (or `SWITCHBOARD_TOKEN`)
authenticates on servers with JWT. Exit status: 0 done, 1 refused (bad room,
bad cursor, token refused or expired), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator

import httpx

#: An SSE stream that sent nothing (not even the heartbeat the server sends
#: at least every 15 s) for this long is considered dead.
IDLE_TIMEOUT = 45.0


@dataclass
class SseEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None


@dataclass
class SseParser:
    """The `text/event-stream` format (WHATWG HTML §9.2.6), line by line."""

    retry_ms: int | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None

    def feed(self, line: str) -> SseEvent | None:
        if line == "":
            if not self._data and not self._event and self._id is None:
                return None
            event = SseEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._id = "", [], None
            return event
        if line.startswith(":"):
            return None  # a comment (`: ping`)
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


class Refused(Exception):
    """The server refused the stream; reconnecting would not help."""


class Unavailable(Exception):
    """The server refused the stream for now (rate limit, overload)."""


class Reader:
    def __init__(self, base_url: str, room: str, *, user: str | None, token: str | None,
                 last_event_id: str | None, json_out: bool, count: int | None):
        self.url = f"{base_url.rstrip('/')}/sse/rooms/{room}"
        self.params = {} if token or not user else {"user": user}
        self.headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.room = room
        self.last_event_id = last_event_id
        self.json_out = json_out
        self.count = count
        self.printed = 0
        self.retry_ms = 2000  # until the server says otherwise

    def note(self, text: str) -> None:
        print(f"[sse_reader] {text}", file=sys.stderr, flush=True)

    def done(self) -> bool:
        return self.count is not None and self.printed >= self.count

    def events(self, client: httpx.Client) -> Iterator[SseEvent]:
        """One connection's events, until the stream ends or breaks."""
        headers = dict(self.headers)
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        with client.stream("GET", self.url, params=self.params, headers=headers) as response:
            if response.status_code != 200:
                body = response.read().decode(errors="replace")
                if response.status_code in (429, 502, 503, 504):
                    raise Unavailable(f"{response.status_code}: {body}")
                raise Refused(f"{response.status_code}: {body}")
            parser = SseParser()
            for line in response.iter_lines():
                event = parser.feed(line)
                if parser.retry_ms is not None:
                    self.retry_ms = parser.retry_ms
                if event is not None:
                    yield event

    def handle(self, event: SseEvent) -> None:
        if event.event == "heartbeat":
            return
        payload = json.loads(event.data) if event.data else {}
        if event.event == "subscribed":
            # The `id:` of `subscribed` is the room's head. When we resume,
            # the replay of what we missed comes *after* it, so adopting it
            # now would skip the replay if the stream broke in between;
            # it is our position only if we had none, or if the server says
            # it could not replay (recovered: false).
            recovered = payload.get("recovered", True)
            if self.last_event_id is None or not recovered:
                if self.last_event_id is not None:
                    self.note(f"missed events: history no longer covers {self.last_event_id}")
                self.last_event_id = event.id or payload.get("cursor")
            self.note(f"subscribed to {self.room} at {payload.get('cursor')}")
            if self.json_out:
                print(json.dumps({"type": "subscribed", **payload}), flush=True)
            return
        if event.event == "error":
            code = payload.get("code")
            self.note(f"stream ended: {code}: {payload.get('message')}")
            if code == "unauthorized":
                raise Refused(payload.get("message", "unauthorized"))
            return  # e.g. slow consumer: reconnect and resume
        if event.id:
            self.last_event_id = event.id
        if event.event == "message":
            self.printed += 1
        if self.json_out:
            print(json.dumps({"type": event.event, **payload}, separators=(",", ":")), flush=True)
        elif event.event == "message":
            print(f"{payload.get('user')}: {payload.get('text', '')}", flush=True)
        else:
            print(f"* {payload.get('user')} {event.event}", flush=True)

    def run(self) -> int:
        timeout = httpx.Timeout(10.0, read=IDLE_TIMEOUT)
        failures = 0
        with httpx.Client(timeout=timeout) as client:
            while True:
                try:
                    for event in self.events(client):
                        failures = 0
                        self.handle(event)
                        if self.done():
                            return 0
                    self.note("stream ended; reconnecting")
                except Refused as err:
                    self.note(f"refused: {err}")
                    return 1
                except (httpx.HTTPError, Unavailable) as err:
                    self.note(f"stream broken: {err!r}; reconnecting")
                    failures += 1
                # The server's `retry:` delay, doubled per failed attempt in
                # a row (capped), with jitter so readers do not return in
                # lockstep after a restart.
                delay = min(30.0, self.retry_ms / 1000 * 2 ** max(0, failures - 1))
                time.sleep(delay * random.uniform(0.8, 1.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="base URL, e.g. http://localhost:8080")
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--user", help="anonymous user name (servers without JWT)")
    parser.add_argument("--token", default=os.environ.get("SWITCHBOARD_TOKEN"))
    parser.add_argument("--last-event-id", help="resume after this cursor")
    parser.add_argument("--json", action="store_true", help="print events as JSON lines")
    parser.add_argument("--count", type=int, help="exit after N messages")
    args = parser.parse_args(argv)
    reader = Reader(args.url, args.room, user=args.user, token=args.token,
                    last_event_id=args.last_event_id, json_out=args.json, count=args.count)
    return reader.run()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
