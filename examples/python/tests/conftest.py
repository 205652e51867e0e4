"""Fixtures: a real `switchboard standalone` for the whole session, a fresh
room per test, the gRPC stubs generated from proto/ into a temporary
directory, and a registry that kills every process a test started."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(EXAMPLES), str(Path(__file__).resolve().parent)]

from harness import Switchboard  # noqa: E402


@pytest.fixture(scope="session")
def server():
    """One standalone server (in-memory bus) shared by the tests; each test
    uses rooms of its own."""
    sb = Switchboard("standalone")
    sb.wait_ready()
    yield sb
    sb.kill()


@pytest.fixture
def room() -> str:
    return f"ex-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def cleanup():
    """Register anything with a .kill() or .close(); it is ended after the
    test, whatever the outcome."""
    things = []
    yield things.append
    for thing in reversed(things):
        try:
            (getattr(thing, "kill", None) or thing.close)()
        except Exception as err:  # keep ending the others
            print(f"cleanup of {thing!r} failed: {err!r}", file=sys.stderr)


@pytest.fixture(scope="session")
def stubs(tmp_path_factory, monkeypatch_session):
    """Python stubs from proto/ (grpcio-tools), never committed: generated
    into a temporary directory, handed to the examples as SWITCHBOARD_STUBS."""
    import grpc_client

    out = grpc_client.generate_stubs(tmp_path_factory.mktemp("stubs"))
    monkeypatch_session.setenv("SWITCHBOARD_STUBS", str(out))
    return out


@pytest.fixture(scope="session")
def monkeypatch_session():
    with pytest.MonkeyPatch.context() as mp:
        yield mp
