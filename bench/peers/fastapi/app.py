"""Benchmark peer: the FastAPI answer to "broadcast to a room", one uvicorn
worker, for `switchboard bench --protocol raw` (README, Benchmarking).

    POST /pub/{room}   body broadcast verbatim to the room; 200 once it was
                       handed to every subscriber
    WS   /sub/{room}   one text frame per message
    GET  /sub/{room}   SSE (text/event-stream): one `data:` event per message

WebSockets follow FastAPI's documented `ConnectionManager` broadcast (send to
each socket in turn); SSE subscribers each own a queue that a
`StreamingResponse` drains. No history, no checks: the floor a chat server is
compared with.

Run: `uvicorn app:app --host 127.0.0.1 --port PORT --workers 1`
(scripts/bench.sh does, from a venv under its cache directory).
"""

import asyncio

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse

app = FastAPI()

# room -> set of accepted WebSockets / SSE queues
ws_rooms: dict[str, set[WebSocket]] = {}
sse_rooms: dict[str, set[asyncio.Queue]] = {}


@app.post("/pub/{room}")
async def publish(room: str, request: Request) -> JSONResponse:
    body = await request.body()
    text = body.decode("utf-8", errors="replace")
    delivered = 0
    queues = sse_rooms.get(room, ())
    if queues:
        # Encoded once for every SSE subscriber.
        event = f"data: {text}\n\n".encode()
        for q in queues:
            q.put_nowait(event)
            delivered += 1
    for ws in list(ws_rooms.get(room, ())):
        try:
            await ws.send_text(text)
            delivered += 1
        except Exception:  # a socket that went away mid-broadcast
            ws_rooms.get(room, set()).discard(ws)
    return JSONResponse({"subscribers": delivered})


@app.websocket("/sub/{room}")
async def subscribe_ws(ws: WebSocket, room: str) -> None:
    # A socket can only be sent to once accepted, so it joins the room just
    # after the 101 went out: the bench's --settle covers that gap.
    await ws.accept()
    members = ws_rooms.setdefault(room, set())
    members.add(ws)
    try:
        while True:
            await ws.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        members.discard(ws)
        if not members:
            ws_rooms.pop(room, None)


@app.get("/sub/{room}")
async def subscribe_sse(room: str) -> StreamingResponse:
    queue: asyncio.Queue = asyncio.Queue()
    members = sse_rooms.setdefault(room, set())
    # Registered before the response headers are sent.
    members.add(queue)

    async def events():
        try:
            while True:
                yield await queue.get()
        finally:
            members.discard(queue)
            if not members:
                sse_rooms.pop(room, None)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )
