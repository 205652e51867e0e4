"""fastapi_backend: a real uvicorn process publishing through a real
Switchboard; what reaches the room's WebSocket subscribers is checked."""

from __future__ import annotations

import re
import sys

import httpx
import pytest

from harness import EXAMPLES, LossyHttpProxy, Process, WsSubscriber, history, publish


def start_backend(switchboard_url: str, room: str) -> tuple[Process, str]:
    app = Process("fastapi", [sys.executable, "-m", "uvicorn", "fastapi_backend.app:app",
                              "--host", "127.0.0.1", "--port", "0"],
                  cwd=EXAMPLES, env={"SWITCHBOARD_URL": switchboard_url,
                                     "SWITCHBOARD_ROOM": room})
    url = app.wait_line(lambda l: (m := re.search(r"running on (http://\S+)", l)) and m[1],
                        "Uvicorn running on", stderr=True)
    return app, url


@pytest.fixture
def backend(server, room, cleanup):
    """The app, talking to Switchboard through a proxy that can lose replies."""
    proxy = LossyHttpProxy(server.http)
    cleanup(proxy)
    app, url = start_backend(proxy.url, room)
    cleanup(app)
    watcher = WsSubscriber(server.ws, room)
    cleanup(watcher)
    return url, proxy, watcher


def order(url: str, body: dict, **headers) -> httpx.Response:
    return httpx.post(f"{url}/orders", json=body, headers=headers, timeout=30)


def order_texts(watcher: WsSubscriber) -> list[str]:
    return [m["text"] for m in watcher.messages()]


def test_order_is_announced_once_when_the_client_retries(backend, server, room):
    url, _, watcher = backend
    first = order(url, {"order_id": "o-1", "item": "widget", "quantity": 2})
    assert first.status_code == 201, first.text
    assert first.json()["duplicate"] is False
    # The client did not hear back (say) and sends the same order again.
    again = order(url, {"order_id": "o-1", "item": "widget", "quantity": 2})
    assert again.status_code == 201, again.text
    assert again.json() == first.json() | {"duplicate": True}
    # A later order is the barrier: once it arrived, anything the retry
    # could have caused would have arrived before it.
    order(url, {"order_id": "o-2", "item": "gadget", "quantity": 1})
    watcher.wait_text("order o-2: 1 x gadget")
    messages = watcher.messages()
    assert [m["text"] for m in messages] == ["order o-1: 2 x widget", "order o-2: 1 x gadget"]
    assert messages[0]["id"] == "order-o-1"
    assert messages[0]["user"] == "orders-service"
    assert messages[0]["cursor"] == first.json()["cursor"]
    assert [e["text"] for e in history(server.http, room) if e["type"] == "message"] == \
        ["order o-1: 2 x widget", "order o-2: 1 x gadget"]


def test_a_lost_reply_from_switchboard_is_retried_and_stored_once(backend):
    url, proxy, watcher = backend
    proxy.lose_replies(1)  # Switchboard stores it, the backend never hears so
    response = order(url, {"order_id": "o-3", "item": "sprocket", "quantity": 5})
    assert response.status_code == 201, response.text
    # The backend's retry hit the stored publish: same id, original cursor.
    assert response.json()["duplicate"] is True
    assert proxy.forwarded_posts == 2
    order(url, {"order_id": "o-4", "item": "barrier", "quantity": 1})
    watcher.wait_text("order o-4: 1 x barrier")
    assert order_texts(watcher) == ["order o-3: 5 x sprocket", "order o-4: 1 x barrier"]
    assert watcher.messages()[0]["cursor"] == response.json()["cursor"]


def test_the_idempotency_key_header_names_the_order(backend):
    url, _, watcher = backend
    body = {"item": "gizmo", "quantity": 3}
    first = order(url, body, **{"Idempotency-Key": "k-9"})
    again = order(url, body, **{"Idempotency-Key": "k-9"})
    assert first.status_code == again.status_code == 201
    assert first.json()["order_id"] == "k-9"
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    assert first.json()["cursor"] == again.json()["cursor"]
    # Without any key every order is a new one.
    third = order(url, body)
    assert third.json()["duplicate"] is False and third.json()["order_id"] != "k-9"
    watcher.wait_for(lambda f: f.get("cursor") == third.json()["cursor"], "third order")
    assert order_texts(watcher) == ["order k-9: 3 x gizmo", f"order {third.json()['order_id']}: 3 x gizmo"]


def test_an_invalid_order_is_refused_and_not_announced(backend, server, room):
    url, _, watcher = backend
    assert order(url, {"order_id": "o-5", "item": "widget", "quantity": 0}).status_code == 422
    assert order(url, {"order_id": "bad id!", "item": "widget", "quantity": 1}).status_code == 422
    publish(server.http, room, "barrier")
    watcher.wait_text("barrier")
    assert order_texts(watcher) == ["barrier"]


def test_an_unreachable_switchboard_is_a_503_after_bounded_retries(room, cleanup):
    app, url = start_backend("http://127.0.0.1:9", room)  # discard port: refused
    cleanup(app)
    response = order(url, {"order_id": "o-6", "item": "widget", "quantity": 1})
    assert response.status_code == 503
    assert response.json()["detail"]["switchboard"] == "unreachable"
