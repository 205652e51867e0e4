"""grpc_client.py as real processes, with stubs generated from proto/ at
test time: `switchboard.v1.Chat/Connect` (subscribe + publish + receive on
one bidirectional stream, resume with `since`, idempotent publish ids) and
the seed's `ChatService/Chat`, checked against a WebSocket subscriber and
the HTTP API of the same room."""

from __future__ import annotations

from harness import WsSubscriber, example, history, publish


def frames(proc, kind: str) -> list[dict]:
    return [f for f in proc.json_lines() if f["frame"] == kind]


def messages(proc) -> list[dict]:
    return [f for f in frames(proc, "event") if f["type"] == "EVENT_TYPE_MESSAGE"]


def test_connect_subscribes_publishes_and_receives(server, room, stubs, cleanup):
    watcher = WsSubscriber(server.ws, room)
    cleanup(watcher)
    client = example("grpc", "grpc_client.py", "connect", server.grpc_addr, "--room", room,
                     "--user", "svc", "--publish", "one", "--publish", "two",
                     "--id-prefix", "svc-a", "--count", "3")
    cleanup(client)
    client.wait_json(lambda f: f["frame"] == "subscribed", "subscribed")
    # Another transport's publish reaches the gRPC stream too.
    publish(server.http, room, "from http", user="dave")
    assert client.wait_exit() == 0, client.logs()

    got = messages(client)
    assert sorted(m["text"] for m in got) == ["from http", "one", "two"]
    assert [m["text"] for m in got if m["user"] == "svc"] == ["one", "two"]
    acks = frames(client, "ack")
    assert [a["id"] for a in acks] == ["svc-a-1", "svc-a-2"]
    assert all(a["duplicate"] is False for a in acks)
    by_id = {m["id"]: m for m in got if m["id"]}
    assert [by_id[a["id"]]["cursor"] for a in acks] == [a["cursor"] for a in acks]

    # Every transport sees the same events in the same order.
    watcher.wait_text("two")
    watcher.wait_text("from http")
    ws = [(m["cursor"], m["text"], m["user"]) for m in watcher.messages()]
    assert ws == [(m["cursor"], m["text"], m["user"]) for m in got]


def test_connect_resumes_after_a_cursor(server, room, stubs, cleanup):
    acks = [publish(server.http, room, f"e{n}", id=f"e{n}") for n in range(1, 5)]
    client = example("grpc", "grpc_client.py", "connect", server.grpc_addr, "--room", room,
                     "--user", "svc", "--since", acks[1]["cursor"], "--count", "2")
    cleanup(client)
    assert client.wait_exit() == 0, client.logs()
    [subscribed] = frames(client, "subscribed")
    assert subscribed["recovered"] is True
    assert [(m["text"], m["cursor"]) for m in messages(client)] == \
        [("e3", acks[2]["cursor"]), ("e4", acks[3]["cursor"])]


def test_a_retried_publish_id_is_stored_once(server, room, stubs, cleanup):
    runs = []
    for _ in range(2):  # the same service run twice, as after a crash and restart
        client = example("grpc", "grpc_client.py", "connect", server.grpc_addr, "--room", room,
                         "--user", "svc", "--publish", "charge card 7", "--id-prefix", "job-7",
                         "--count", "0")
        cleanup(client)
        assert client.wait_exit() == 0, client.logs()
        [ack] = frames(client, "ack")
        runs.append(ack)
    assert runs[0]["duplicate"] is False and runs[1]["duplicate"] is True
    assert runs[0]["cursor"] == runs[1]["cursor"]
    assert [e["text"] for e in history(server.http, room) if e["type"] == "message"] == \
        ["charge card 7"]


def test_seed_chat_service_stream(server, room, stubs, cleanup):
    watcher = WsSubscriber(server.ws, room)
    cleanup(watcher)
    client = example("seed", "grpc_client.py", "seed", server.grpc_addr, "--room", room,
                     "--user", "erin", "--say", "seed hi", "--count", "2")
    cleanup(client)
    client.wait_json(lambda f: f["frame"] == "ready", "ready")
    watcher.wait_text("seed hi")  # published into the room from the seed stream
    publish(server.http, room, "hello erin", user="dave")
    assert client.wait_exit() == 0, client.logs()
    assert [(f["user"], f["message"]) for f in frames(client, "chat")] == \
        [("erin", "seed hi"), ("dave", "hello erin")]
    assert watcher.wait_text("seed hi")["user"] == "erin"


def test_refused_rooms_end_both_commands_with_status_1(server, stubs, cleanup):
    for command, needle in (("connect", "invalid_room"), ("seed", "INVALID_ARGUMENT")):
        client = example(command, "grpc_client.py", command, server.grpc_addr,
                         "--room", "no.dots", "--user", "svc")
        cleanup(client)
        assert client.wait_exit() == 1
        assert any(needle in line for line in client.stderr), client.logs()
        assert not frames(client, "ready")
