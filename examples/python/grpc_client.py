#!/usr/bin/env python3
"""Switchboard's gRPC streams (SPEC §5) from Python, with `grpcio` (asyncio).

Two commands:

* `connect`: `switchboard.v1.Chat/Connect`, the whole WebSocket protocol as
  one bidirectional stream: subscribe to a room (optionally from a cursor),
  publish with ids (acks come back on the same stream, matched by id), and
  receive the room's events.

      python grpc_client.py connect localhost:50051 --room lobby --user svc \\
          --publish "build 42 passed" --count 1

* `seed`: the package-less, seed-compatible `ChatService/Chat` stream:
  `ChatMessage{user, message}` both ways, room from the `x-room` metadata.

      python grpc_client.py seed localhost:50051 --room lobby --user erin --say "hi"

Output is JSON lines, each with `frame` = `subscribed`, `ack`, `event` or
`error` for `connect` (and the protobuf message's fields, e.g. an event's
`type` is `EVENT_TYPE_MESSAGE`); `ready`, then `chat` per received
`ChatMessage` for `seed`. `--count N` exits after
N received messages (default: as many as you publish). Anonymous servers
take the user from the `x-user` metadata; with JWT auth pass `--token`
(sent as `authorization: Bearer …`).

The Python stubs are generated from `proto/` by `grpcio-tools` (never
committed): into `$SWITCHBOARD_STUBS` when that is set (the tests do so),
else into `.stubs/` beside this file (git-ignored), on first use.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
import uuid
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent
PROTO_DIR = Path(os.environ.get("SWITCHBOARD_PROTO_DIR", HERE.parent.parent / "proto"))
PROTOS = ["switchboard/v1/event.proto", "switchboard/v1/chat.proto",
          "switchboard/v1/seed_chat.proto"]


def generate_stubs(out_dir: Path, proto_dir: Path = PROTO_DIR) -> Path:
    """`python -m grpc_tools.protoc` on the project's protos, into out_dir."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    status = protoc.main(["grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out_dir}",
                          f"--grpc_python_out={out_dir}", *(str(proto_dir / p) for p in PROTOS)])
    if status != 0:
        raise RuntimeError(f"protoc failed ({status}) on {proto_dir}")
    return out_dir


def load_stubs():
    """The generated modules, as a namespace: event_pb2, chat_pb2,
    chat_pb2_grpc, seed_pb2, seed_pb2_grpc."""
    out_dir = os.environ.get("SWITCHBOARD_STUBS")
    if out_dir:
        out = Path(out_dir)
        if not (out / "switchboard/v1/chat_pb2.py").exists():
            generate_stubs(out)
    else:
        out = HERE / ".stubs"
        newest_proto = max((PROTO_DIR / p).stat().st_mtime for p in PROTOS)
        marker = out / "switchboard/v1/chat_pb2.py"
        if not marker.exists() or marker.stat().st_mtime < newest_proto:
            generate_stubs(out)
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))

    class Stubs:
        event_pb2 = importlib.import_module("switchboard.v1.event_pb2")
        chat_pb2 = importlib.import_module("switchboard.v1.chat_pb2")
        chat_pb2_grpc = importlib.import_module("switchboard.v1.chat_pb2_grpc")
        seed_pb2 = importlib.import_module("switchboard.v1.seed_chat_pb2")
        seed_pb2_grpc = importlib.import_module("switchboard.v1.seed_chat_pb2_grpc")
    return Stubs


def call_metadata(user: str | None, token: str | None, **extra: str) -> list[tuple[str, str]]:
    metadata = [("authorization", f"Bearer {token}")] if token else []
    if user and not token:
        metadata.append(("x-user", user))
    metadata.extend(extra.items())
    return metadata


def emit(frame: str, body: dict) -> None:
    """One JSON line: `frame` names what it is (`subscribed`, `ack`,
    `event`, `error`, `ready`, `chat`); the rest are the proto's fields."""
    print(json.dumps({"frame": frame, **body}, separators=(",", ":")), flush=True)


class ChatConnection:
    """One `Chat/Connect` stream. Replies are matched as the server sends
    them: `subscribed` by room, `ack` (and a publish's `error`) by publish
    id; events go to `self.events`."""

    def __init__(self, channel: grpc.aio.Channel, stubs, metadata):
        self.pb = stubs.chat_pb2
        self.call = stubs.chat_pb2_grpc.ChatStub(channel).Connect(metadata=metadata)
        self.events: asyncio.Queue = asyncio.Queue()
        self._subscribing: dict[str, asyncio.Future] = {}
        self._publishing: dict[str, asyncio.Future] = {}
        self._reader = asyncio.create_task(self._read())

    async def subscribe(self, room: str, since: str | None = None):
        """Resolves with the `Subscribed` frame; with `since`, the replayed
        events follow it on `self.events`, before live ones."""
        future = asyncio.get_running_loop().create_future()
        self._subscribing[room] = future
        await self.call.write(self.pb.ClientFrame(
            subscribe=self.pb.SubscribeRequest(room=room, since=since or "")))
        return await future

    async def publish(self, room: str, text: str, publish_id: str | None = None):
        """Resolves with the `PublishResponse` ack (its `duplicate` is true
        when a retry hit a stored publish); raises on an `Error`."""
        publish_id = publish_id or uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self._publishing[publish_id] = future
        await self.call.write(self.pb.ClientFrame(
            publish=self.pb.PublishRequest(room=room, text=text, id=publish_id)))
        return await future

    async def close(self) -> None:
        try:
            await self.call.done_writing()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError):
            pass  # the call is over already
        self.call.cancel()
        self._reader.cancel()

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.call.read()
                if frame is grpc.aio.EOF:
                    break
                kind = frame.WhichOneof("frame")
                if kind == "subscribed":
                    future = self._subscribing.pop(frame.subscribed.room, None)
                    if future and not future.done():
                        future.set_result(frame.subscribed)
                elif kind == "ack":
                    future = self._publishing.pop(frame.ack.id, None)
                    if future and not future.done():
                        future.set_result(frame.ack)
                elif kind == "error":
                    future = self._publishing.pop(frame.error.id, None) if frame.error.id else None
                    if future is None and self._subscribing and not frame.error.id:
                        # Replies come in order: an error without a publish
                        # id answers the oldest pending subscribe.
                        room = next(iter(self._subscribing))
                        future = self._subscribing.pop(room)
                    if future and not future.done():
                        future.set_exception(RuntimeError(f"{frame.error.code}: {frame.error.message}"))
                    else:
                        await self.events.put(frame)
                elif kind == "event":
                    await self.events.put(frame.event)
        except grpc.aio.AioRpcError as err:
            failure = RuntimeError(f"stream ended: {err.code().name}: {err.details()}")
            for future in [*self._subscribing.values(), *self._publishing.values()]:
                if not future.done():
                    future.set_exception(failure)
            await self.events.put(failure)
            return
        await self.events.put(None)


async def run_connect(args) -> int:
    from google.protobuf.json_format import MessageToDict

    def as_dict(message) -> dict:
        return MessageToDict(message, preserving_proto_field_name=True,
                             always_print_fields_with_no_presence=True)

    stubs = load_stubs()
    count = args.count if args.count is not None else len(args.publish)
    async with grpc.aio.insecure_channel(args.target) as channel:
        conn = ChatConnection(channel, stubs, call_metadata(args.user, args.token))
        subscribed = await asyncio.wait_for(conn.subscribe(args.room, args.since), args.timeout)
        emit("subscribed", as_dict(subscribed))
        prefix = args.id_prefix or f"{args.user or 'grpc'}-{uuid.uuid4().hex[:8]}"

        async def publish_all() -> None:
            for n, text in enumerate(args.publish, 1):
                ack = await conn.publish(args.room, text, f"{prefix}-{n}")
                emit("ack", as_dict(ack))

        publisher = asyncio.create_task(publish_all())
        received = 0
        try:
            async with asyncio.timeout(args.timeout):
                while received < count:
                    item = await conn.events.get()
                    if item is None or isinstance(item, Exception):
                        print(f"[grpc_client] {item or 'stream ended'}", file=sys.stderr)
                        return 1
                    if isinstance(item, stubs.chat_pb2.Error):
                        emit("error", as_dict(item))
                        continue
                    emit("event", as_dict(item))
                    if item.type == stubs.event_pb2.EVENT_TYPE_MESSAGE:
                        received += 1
                await publisher
        finally:
            publisher.cancel()
            await conn.close()
    return 0


async def run_seed(args) -> int:
    stubs = load_stubs()
    pb = stubs.seed_pb2
    count = args.count if args.count is not None else len(args.say)
    outgoing: asyncio.Queue = asyncio.Queue()

    async def requests():
        while (message := await outgoing.get()) is not None:
            yield message

    metadata = call_metadata(args.user, args.token, **{"x-room": args.room})
    async with grpc.aio.insecure_channel(args.target) as channel:
        call = stubs.seed_pb2_grpc.ChatServiceStub(channel).Chat(requests(), metadata=metadata)
        try:
            async with asyncio.timeout(args.timeout):
                # The server subscribes before it answers with its headers:
                # from here on, every message of the room reaches us.
                await call.initial_metadata()
                if call.done() and await call.code() != grpc.StatusCode.OK:
                    # A refusal comes as a trailers-only answer instead.
                    print(f"[grpc_client] {(await call.code()).name}: {await call.details()}",
                          file=sys.stderr)
                    return 1
                emit("ready", {"room": args.room})
                for text in args.say:
                    outgoing.put_nowait(pb.ChatMessage(user=args.user or "", message=text))
                received = 0
                while received < count:
                    message = await call.read()
                    if message is grpc.aio.EOF:
                        return 1
                    emit("chat", {"user": message.user, "message": message.message})
                    received += 1
        except grpc.aio.AioRpcError as err:
            print(f"[grpc_client] {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        finally:
            outgoing.put_nowait(None)
            call.cancel()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("connect", "seed"):
        p = sub.add_parser(name)
        p.add_argument("target", help="host:port of the gRPC API")
        p.add_argument("--room", default="lobby")
        p.add_argument("--user", help="anonymous user name (x-user)")
        p.add_argument("--token", default=os.environ.get("SWITCHBOARD_TOKEN"))
        p.add_argument("--count", type=int, help="exit after N received messages")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds for the whole run")
    connect = sub.choices["connect"]
    connect.add_argument("--since", help="replay the events after this cursor first")
    connect.add_argument("--publish", action="append", default=[], help="text to publish")
    connect.add_argument("--id-prefix", help="publish ids are <prefix>-<n>")
    sub.choices["seed"].add_argument("--say", action="append", default=[], help="text to send")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run_connect(args) if args.command == "connect" else run_seed(args))
    except TimeoutError:
        print(f"[grpc_client] timed out after {args.timeout} s", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a refusal: invalid_room, forbidden, …
        print(f"[grpc_client] {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
