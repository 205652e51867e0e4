"""sse_reader.py as a real process: reads a room, survives a cut of its
connection (a proxy between it and the server resets every connection and
refuses new ones for a while, as a restarting load balancer would) and
resumes with Last-Event-ID: nothing published meanwhile is lost, nothing is
printed twice."""

from __future__ import annotations

from harness import TcpProxy, example, history, publish, wait_until


def messages(reader) -> list[dict]:
    return [f for f in reader.json_lines() if f["type"] == "message"]


def test_resumes_with_last_event_id_after_a_cut(server, room, cleanup):
    proxy = TcpProxy(server.http_addr)
    cleanup(proxy)
    reader = example("sse", "sse_reader.py", f"http://{proxy.addr}", "--room", room,
                     "--user", "carol", "--json", "--count", "8")
    cleanup(reader)
    reader.wait_json(lambda f: f["type"] == "subscribed", "subscribed")

    for n in (1, 2, 3):
        publish(server.http, room, f"m{n}", id=f"m{n}")
    reader.wait_json(lambda f: f.get("text") == "m3", "m3")

    proxy.refusing = True
    proxy.cut()
    reader.wait_line(lambda l: "reconnecting" in l, "the reader noticing", stderr=True)
    for n in (4, 5, 6):  # while the reader cannot connect
        publish(server.http, room, f"m{n}", id=f"m{n}")
    proxy.refusing = False
    # The reader comes back after the server's `retry:` delay (2 s).
    wait_until(lambda: len(messages(reader)) >= 6, "the replay of m4..m6", timeout=30)
    for n in (7, 8):
        publish(server.http, room, f"m{n}", id=f"m{n}")
    assert reader.wait_exit(30) == 0, reader.logs()

    got = messages(reader)
    assert [m["text"] for m in got] == [f"m{n}" for n in range(1, 9)]
    stored = [e for e in history(server.http, room) if e["type"] == "message"]
    assert [m["cursor"] for m in got] == [e["cursor"] for e in stored]
    assert proxy.accepted >= 2  # it did reconnect


def test_starts_after_a_given_last_event_id(server, room, cleanup):
    acks = [publish(server.http, room, f"old{n}") for n in (1, 2, 3)]
    reader = example("sse", "sse_reader.py", server.http, "--room", room, "--user", "dan",
                     "--last-event-id", acks[0]["cursor"], "--count", "2")
    cleanup(reader)
    assert reader.wait_exit() == 0, reader.logs()
    assert [l for l in reader.stdout if ": " in l] == ["tester: old2", "tester: old3"]


def test_a_refused_stream_ends_it_with_status_1(server, room, cleanup):
    reader = example("sse", "sse_reader.py", server.http, "--room", room,
                     "--last-event-id", "not-a-cursor")
    cleanup(reader)
    assert reader.wait_exit() == 1
    assert any("bad_frame" in line for line in reader.stderr), reader.logs()
