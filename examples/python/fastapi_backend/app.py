"""A FastAPI backend that announces new orders in a Switchboard room.

The seed's "FastAPI" row, as an application backend: `POST /orders` stores
nothing of its own (it is a stand-in for your real order logic) and
publishes a notification into the room through Switchboard's HTTP API
(SPEC §4, `POST /api/rooms/{room}/messages`). Browsers, apps and services
subscribed to that room over WebSocket, SSE or gRPC get it at once.

Every notification carries an id derived from the order (`order-<id>`), so
retries are safe end to end: a client that retries `POST /orders` after a
lost response, or this backend retrying after a lost reply from Switchboard,
still stores the notification once (Switchboard answers the retry with the
original cursor and `duplicate: true`).

Configuration (environment):

* `SWITCHBOARD_URL`   base URL of a Switchboard gateway or standalone
                      server, e.g. `http://localhost:8080` (required)
* `SWITCHBOARD_ROOM`  room of the notifications (default `orders`)
* `SWITCHBOARD_USER`  publisher name on servers without JWT (default
                      `orders-service`)
* `SWITCHBOARD_TOKEN` a JWT for servers with `--jwt-secret`/`--jwt-public-key`
                      (sent as `Authorization: Bearer`; then the user is the
                      token's `sub`)

Run it:  SWITCHBOARD_URL=http://localhost:8080 uvicorn fastapi_backend.app:app
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from contextlib import asynccontextmanager
from typing import Annotated

import httpx
from fastapi import FastAPI, Header, HTTPException, Request
from pydantic import BaseModel, Field

#: Attempts of one publish (the first one included) before giving up.
PUBLISH_ATTEMPTS = 5
#: Switchboard answers these when a retry later may succeed.
RETRYABLE_STATUS = {429, 502, 503, 504}


class Order(BaseModel):
    """A new order. `order_id` is the client's idempotency key; without one
    the `Idempotency-Key` header is used, else a fresh id is made."""

    order_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    item: str = Field(min_length=1, max_length=200)
    quantity: int = Field(ge=1, le=10_000)


class OrderAccepted(BaseModel):
    order_id: str
    room: str
    #: Position of the notification in the room (hand it to clients as
    #: `since` if they should see everything after it).
    cursor: str
    #: True when Switchboard had stored this notification already (a retry).
    duplicate: bool


class SwitchboardError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Switchboard:
    """The few lines of Switchboard's HTTP API this backend needs."""

    def __init__(self, base_url: str, user: str | None, token: str | None,
                 client: httpx.AsyncClient):
        self.base_url = base_url.rstrip("/")
        self.user = user
        self.token = token
        self.client = client

    async def publish(self, room: str, text: str, message_id: str) -> dict:
        """Publishes once, whatever the retries: every attempt carries the
        same id, so Switchboard stores it at most once."""
        url = f"{self.base_url}/api/rooms/{room}/messages"
        params = {} if self.token or not self.user else {"user": self.user}
        headers = {"Idempotency-Key": message_id}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        delay = 0.05
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            last = attempt == PUBLISH_ATTEMPTS
            try:
                response = await self.client.post(
                    url, params=params, headers=headers,
                    json={"text": text, "id": message_id})
            except httpx.TransportError:
                # Connection refused or reset, or the reply was lost: the
                # message may or may not be stored; the same id makes the
                # retry safe either way.
                if last:
                    raise
            else:
                if response.status_code == 201:
                    return response.json()
                if response.status_code not in RETRYABLE_STATUS or last:
                    error = _error_of(response)
                    raise SwitchboardError(response.status_code, *error)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        error = response.json()["error"]
        return error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        return "unexpected", response.text[:200]


@asynccontextmanager
async def lifespan(app: FastAPI):
    base_url = os.environ.get("SWITCHBOARD_URL")
    if not base_url:
        raise RuntimeError("set SWITCHBOARD_URL, e.g. http://localhost:8080")
    timeout = httpx.Timeout(float(os.environ.get("SWITCHBOARD_TIMEOUT", "5")))
    async with httpx.AsyncClient(timeout=timeout) as client:
        app.state.switchboard = Switchboard(
            base_url,
            os.environ.get("SWITCHBOARD_USER", "orders-service"),
            os.environ.get("SWITCHBOARD_TOKEN"),
            client,
        )
        app.state.room = os.environ.get("SWITCHBOARD_ROOM", "orders")
        yield


app = FastAPI(title="orders (Switchboard example)", lifespan=lifespan)


@app.post("/orders", status_code=201, response_model=OrderAccepted)
async def create_order(
    order: Order,
    request: Request,
    idempotency_key: Annotated[str | None, Header(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = None,
) -> OrderAccepted:
    order_id = order.order_id or idempotency_key or uuid.uuid4().hex
    room = request.app.state.room
    text = f"order {order_id}: {order.quantity} x {order.item}"
    try:
        ack = await request.app.state.switchboard.publish(room, text, f"order-{order_id}")
    except SwitchboardError as err:
        raise HTTPException(502, detail={"switchboard": err.code, "message": err.message})
    except httpx.TransportError as err:
        raise HTTPException(503, detail={"switchboard": "unreachable", "message": str(err)})
    return OrderAccepted(order_id=order_id, room=ack["room"], cursor=ack["cursor"],
                         duplicate=ack["duplicate"])


@app.get("/healthz")
async def healthz() -> dict:
    return {"ok": True}
