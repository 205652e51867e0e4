"""ws_chat.py as real processes: two users chatting on a standalone server,
and one client resuming across a restart of its WebSocket gateway in
distributed mode (nats-server + `switchboard core` + `switchboard
ws-gateway`), with no gap, no duplicate, and its unacknowledged publish
stored once."""

from __future__ import annotations

import pytest

from harness import Nats, Switchboard, example, free_port, history, publish


def offset(cursor: str) -> int:
    return int(cursor.rsplit(":", 1)[1])


def texts(chat) -> list[str]:
    return [f["text"] for f in chat.json_lines() if f["type"] == "message"]


def test_two_users_chat(server, room, cleanup):
    alice = example("alice", "ws_chat.py", server.ws, "--room", room, "--user", "alice",
                    "--json", stdin=True)
    cleanup(alice)
    bob = example("bob", "ws_chat.py", server.http, "--room", room, "--user", "bob",
                  "--json", stdin=True)
    cleanup(bob)
    for chat in (alice, bob):
        chat.wait_json(lambda f: f["type"] == "subscribed", "subscribed")

    alice.write("hi bob")
    got = bob.wait_json(lambda f: f["type"] == "message" and f["text"] == "hi bob", "alice's line")
    assert got["user"] == "alice" and got["id"]
    ack = alice.wait_json(lambda f: f["type"] == "ack", "alice's ack")
    assert ack["id"] == got["id"] and ack["cursor"] == got["cursor"] and ack["duplicate"] is False

    bob.write("hello alice")
    alice.wait_json(lambda f: f["type"] == "message" and f["text"] == "hello alice", "bob's line")
    # Each sees both lines, once, in the room's order.
    for chat in (alice, bob):
        chat.wait_json(lambda f: f["type"] == "message" and f["text"] == "hello alice", "line")
        assert texts(chat) == ["hi bob", "hello alice"]


def test_piped_lines_are_published_and_it_exits(server, room, cleanup):
    chat = example("pipe", "ws_chat.py", server.http, "--room", room, "--user", "ci",
                   stdin=True)
    cleanup(chat)
    chat.write("deploy finished")
    chat.write("tests green")
    chat.proc.stdin.close()
    assert chat.wait_exit() == 0, chat.logs()
    assert chat.stdout[-2:] == ["ci: deploy finished", "ci: tests green"]
    assert [e["text"] for e in history(server.http, room) if e["type"] == "message"] == \
        ["deploy finished", "tests green"]


def test_a_refused_room_ends_it_with_status_1(server, cleanup):
    chat = example("bad", "ws_chat.py", server.ws, "--room", "no.dots", "--user", "x",
                   stdin=True)
    cleanup(chat)
    assert chat.wait_exit() == 1
    assert any("invalid_room" in line for line in chat.stderr)


@pytest.fixture
def cluster(cleanup):
    """nats-server, one core, and two WebSocket gateways: `edge` (the chat
    client's, restarted by the test) and `other` (where the test publishes
    while `edge` is down)."""
    nats = Nats()
    cleanup(nats)
    core = Switchboard("core", nats_url=nats.url)
    cleanup(core)
    gateways = {}
    for name in ("edge", "other"):
        gw = Switchboard("ws-gateway", nats_url=nats.url)
        cleanup(gw)
        gateways[name] = gw
    core.wait_ready()
    for gw in gateways.values():
        gw.wait_ready()
    return nats, core, gateways, cleanup


def test_resumes_across_a_gateway_restart(cluster, room):
    nats, _, gateways, cleanup = cluster
    edge, other = gateways["edge"], gateways["other"]
    chat = example("chat", "ws_chat.py", edge.ws, "--room", room, "--user", "alice", "--json",
                   "--max-backoff", "0.5", stdin=True)
    cleanup(chat)
    chat.wait_json(lambda f: f["type"] == "subscribed", "subscribed")

    def seen(text):
        return chat.wait_json(lambda f: f["type"] == "message" and f["text"] == text, text)

    for n in (1, 2, 3):
        publish(other.http, room, f"m{n}", id=f"m{n}")
    seen("m3")
    chat.write("before")
    chat.wait_json(lambda f: f["type"] == "ack", "ack of 'before'")

    # The gateway dies; the room goes on without the client.
    edge.kill()
    chat.wait_line(lambda l: "connection lost" in l or "cannot connect" in l,
                   "the client noticing", stderr=True)
    for n in (4, 5, 6):
        publish(other.http, room, f"m{n}", id=f"m{n}")
    chat.write("while-down")  # queued until the client is back

    # Redeployed on the same address: the client reconnects by itself.
    restarted = Switchboard("ws-gateway", nats_url=nats.url, http_addr=edge.http_addr)
    cleanup(restarted)
    seen("m6")
    while_down = seen("while-down")
    ack = chat.wait_json(lambda f: f["type"] == "ack" and f["id"] == while_down["id"],
                         "ack of 'while-down'")
    assert ack["duplicate"] is False
    for n in (7, 8):
        publish(other.http, room, f"m{n}", id=f"m{n}")
    seen("m8")

    assert texts(chat) == ["m1", "m2", "m3", "before", "m4", "m5", "m6", "while-down", "m7", "m8"]
    events = [f for f in chat.json_lines() if f["type"] in ("message", "join", "leave")]
    offsets = [offset(e["cursor"]) for e in events]
    assert offsets == sorted(set(offsets)), f"not strictly increasing: {offsets}"
    # Every message of the room, and each stored once.
    stored = [e["text"] for e in history(other.http, room) if e["type"] == "message"]
    assert stored == texts(chat)


def test_waits_for_a_gateway_that_is_not_connected_yet(room, cleanup):
    """A gateway serves WebSocket before it reaches NATS (its /readyz says
    so meanwhile); a subscribe there is refused `unavailable`, and the
    client asks again until the core answers."""
    nats_port = free_port()
    gateway = Switchboard("ws-gateway", nats_url=f"nats://127.0.0.1:{nats_port}")
    cleanup(gateway)
    chat = example("chat", "ws_chat.py", gateway.ws, "--room", room, "--user", "early",
                   "--json", stdin=True)
    cleanup(chat)
    chat.wait_line(lambda l: "subscribe refused for now (unavailable)" in l,
                   "an unavailable refusal", stderr=True)
    chat.write("queued while unavailable")

    nats = Nats(port=nats_port)
    cleanup(nats)
    core = Switchboard("core", nats_url=nats.url)
    cleanup(core)
    chat.wait_json(lambda f: f["type"] == "subscribed", "subscribed", timeout=30)
    got = chat.wait_json(lambda f: f["type"] == "message", "its queued line")
    assert got["text"] == "queued while unavailable" and got["user"] == "early"
    assert [e["text"] for e in history(gateway.http, room) if e["type"] == "message"] == \
        ["queued while unavailable"]
