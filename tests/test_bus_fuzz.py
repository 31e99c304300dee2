"""Fuzzing the typed bodies: well-formed envelopes of every kind with random
bodies, over real ZeroMQ, to a Hub in another process that feeds what it
accepts to the live tally. The receiver must survive, every body it hands
out must have the shape its consumers rely on (checked here by rules
written from docs/actors.md, not from bus.records), and every frame must be
either accepted or counted as rejected.

Run as a script, this file is the receiver.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack

KINDS = ("hello", "ready", "heartbeat", "command", "ack", "log", "kernel", "stats", "eof")
# Events-channel kinds; the control channel carries the others.
EVENT_KINDS = ("log", "kernel", "stats", "eof")
END = "fuzz-end"  # the events sender whose eof, with a READY saying "end", ends the receiver


# -- what consumers may rely on (docs/actors.md, "bodies") ---------------------


def count(v: Any) -> bool:
    return type(v) is int and v >= 0


def integer(v: Any) -> bool:
    return type(v) is int


def text(v: Any) -> bool:
    return type(v) is str


def number(v: Any) -> bool:
    return type(v) in (int, float)


def boolean(v: Any) -> bool:
    return type(v) is bool


APP_REQUIRED = {
    "event": text,
    "actor": text,
    "pid": count,
    "mono_ns": count,
    "wall": number,
    "level": text,
}
APP_OPTIONAL = {
    "fd": integer,
    "laddr": text,
    "lport": count,
    "raddr": text,
    "rport": count,
    "errno": count,
    "error": text,
    "open_fds": count,
}
KERNEL_FIELDS = {
    "tcp_state": {
        "ts": count,
        "skaddr": count,
        "cpu_pid": count,
        "cpu_tid": count,
        "cpu_comm": text,
        "family": integer,
        "saddr": text,
        "sport": count,
        "daddr": text,
        "dport": count,
        "old": text,
        "new": text,
    },
    "accept": {
        "ts": count,
        "pid": count,
        "tid": count,
        "comm": text,
        "syscall": text,
        "lfd": integer,
        "fd": integer,
        "errno": count,
        "family": integer,
        "peer_addr": text,
        "peer_port": count,
        "dur_ns": count,
    },
    "epoll": {
        "ts": count,
        "pid": count,
        "tid": count,
        "comm": text,
        "syscall": text,
        "epfd": integer,
        "maxevents": integer,
        "timeout_ms": integer,
        "ready": integer,
        "errno": count,
        "dur_ns": count,
    },
}


def fields_ok(d: Any, required: dict[str, Any], optional: dict[str, Any] | None = None) -> bool:
    if not isinstance(d, dict):
        return False
    if not all(k in d and check(d[k]) for k, check in required.items()):
        return False
    return all(check(d[k]) for k, check in (optional or {}).items() if k in d)


def counts_by(key: Any, d: Any) -> bool:
    return isinstance(d, dict) and all(key(k) and count(v) for k, v in d.items())


def stats_ok(b: dict[str, Any]) -> bool:
    if not text(b.get("source")):
        return False
    if "states" in b and not counts_by(text, b["states"]):
        return False
    if "fds" in b and not counts_by(lambda k: integer(k) or text(k), b["fds"]):
        return False
    for key in ("sample_ns", "mono_ns"):
        if key in b and not count(b[key]):
            return False
    for key in ("done", "final"):
        if key in b and not boolean(b[key]):
            return False
    if "programs" in b:
        progs = b["programs"]
        if not isinstance(progs, dict) or not all(
            text(n) and fields_ok(p, {"events": count, "drops": count}) for n, p in progs.items()
        ):
            return False
    if "epoll_hist" in b:
        hist = b["epoll_hist"]
        slots = lambda v: isinstance(v, list) and all(count(x) for x in v)  # noqa: E731
        if not isinstance(hist, list) or not all(
            fields_ok(h, {"pid": count, "blocked_ns_log2": slots, "ready_log2": slots})
            for h in hist
        ):
            return False
    return True


def body_ok(kind: str, b: Any) -> bool:
    """The documented shape of an accepted body, per kind."""
    if not isinstance(b, dict) or not all(text(k) for k in b):
        return False
    if kind == "hello":
        return fields_ok(b, {"role": text, "pid": count})
    if kind == "ready":
        return fields_ok(b, {"pid": count})
    if kind == "command":
        return fields_ok(b, {"name": text, "args": lambda a: isinstance(a, dict)})
    if kind == "ack":
        return fields_ok(
            b,
            {"command_seq": count, "ok": boolean},
            {"error": text, "result": lambda r: isinstance(r, dict)},
        )
    if kind == "log":
        recs = b.get("records")
        return isinstance(recs, list) and all(
            fields_ok(r, APP_REQUIRED, APP_OPTIONAL) for r in recs
        )
    if kind == "kernel":
        fields = KERNEL_FIELDS.get(b.get("probe"))  # type: ignore[arg-type]
        evs = b.get("events")
        return (
            fields is not None
            and isinstance(evs, list)
            and all(fields_ok(e, fields) and e.get("type") == b["probe"] for e in evs)
        )
    if kind == "stats":
        return stats_ok(b)
    if kind == "eof":
        return fields_ok(b, {"last_seq": count})
    return kind == "heartbeat"


# -- the receiver (this file run as a script) ----------------------------------


def receive(events: str, control: str) -> int:
    from bus.hub import Hub
    from lab.tally import Tally

    hub = Hub(events, control)
    tally = Tally()
    handed: dict[str, int] = {}
    misshapen: list[str] = []
    end = time.monotonic() + 300
    eof = ready = False
    while time.monotonic() < end and not (eof and ready):
        for _channel, env in hub.poll(100):
            handed[env.kind.value] = handed.get(env.kind.value, 0) + 1
            if not body_ok(env.kind.value, env.body):
                misshapen.append(f"{env.kind.value}: {env.body!r:.300}")
            tally.add(env)  # the live run's consumer: must not raise
            eof = eof or (env.kind.value == "eof" and env.sender == END)
            ready = ready or (env.kind.value == "ready" and env.body.get("end") is True)
    print(
        json.dumps(
            {
                "events": hub.events_ledger.summary(),
                "control": hub.control_ledger.summary(),
                "handed": handed,
                "misshapen": misshapen[:5],
            },
            default=str,
        )
    )
    hub.close()
    return 0 if eof and ready else 5


if __name__ == "__main__":
    sys.exit(receive(sys.argv[1], sys.argv[2]))


# -- the sender: hypothesis -------------------------------------------------------

import zmq  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bus.endpoints import Endpoints  # noqa: E402

anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=6)
    | st.binary(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
nat = st.integers(0, 2**64 - 1)
name = st.text(min_size=1, max_size=6)
extras = st.dictionaries(st.text(max_size=6).map(lambda k: "x_" + k), anything, max_size=2)


def with_extras(base: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda b, e: {**e, **b}, base, extras)


app_record = with_extras(
    st.fixed_dictionaries(
        {
            "event": name,
            "actor": name,
            "pid": nat,
            "mono_ns": nat,
            "wall": st.floats(allow_nan=False),
            "level": st.sampled_from(["info", "warning"]),
        },
        optional={
            "fd": st.integers(-1, 2**31),
            "laddr": st.text(max_size=8),
            "lport": nat,
            "raddr": st.text(max_size=8),
            "rport": nat,
            "errno": nat,
            "error": name,
            "open_fds": nat,
        },
    )
)
text_of: dict[Any, st.SearchStrategy[Any]] = {
    count: nat,
    integer: st.integers(-5, 2**31),
    text: st.text(max_size=8),
}


def kernel_batch(probe: str) -> st.SearchStrategy[dict[str, Any]]:
    event = st.fixed_dictionaries(
        {"type": st.just(probe), **{k: text_of[check] for k, check in KERNEL_FIELDS[probe].items()}}
    )
    return st.fixed_dictionaries({"probe": st.just(probe), "events": st.lists(event, max_size=4)})


counts = st.dictionaries(st.text(max_size=10), nat, max_size=4)
VALID: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "hello": with_extras(st.fixed_dictionaries({"role": name, "pid": nat})),
    "ready": with_extras(st.fixed_dictionaries({"pid": nat})),
    "heartbeat": extras,
    "command": st.fixed_dictionaries(
        {"name": name, "args": st.dictionaries(st.text(max_size=4), anything, max_size=3)}
    ),
    "ack": st.fixed_dictionaries(
        {"command_seq": nat, "ok": st.booleans()},
        optional={
            "error": st.text(max_size=8),
            "result": st.dictionaries(st.text(max_size=4), anything, max_size=2),
        },
    ),
    "log": st.fixed_dictionaries({"records": st.lists(app_record, max_size=4)}),
    "kernel": st.sampled_from(sorted(KERNEL_FIELDS)).flatmap(kernel_batch),
    "stats": with_extras(
        st.fixed_dictionaries(
            {"source": name},
            optional={
                "states": counts,
                "fds": st.dictionaries(st.integers(0, 2**22), nat, max_size=3),
                "sample_ns": nat,
                "done": st.booleans(),
                "final": st.booleans(),
                "programs": st.dictionaries(
                    name, st.fixed_dictionaries({"events": nat, "drops": nat}), max_size=3
                ),
                "epoll_hist": st.lists(
                    st.fixed_dictionaries(
                        {
                            "pid": nat,
                            "blocked_ns_log2": st.lists(nat, max_size=4),
                            "ready_log2": st.lists(nat, max_size=4),
                        }
                    ),
                    max_size=2,
                ),
            },
        )
    ),
    "eof": st.fixed_dictionaries({"last_seq": nat}),
}


def spoiled(body: dict[str, Any]) -> st.SearchStrategy[Any]:
    """The body with one value (maybe a nested one) replaced by anything."""
    if not body:
        return anything
    return st.sampled_from(sorted(body)).flatmap(lambda k: anything.map(lambda v: {**body, k: v}))


def body_for(kind: str) -> st.SearchStrategy[Any]:
    valid = VALID[kind]
    return st.one_of(valid, valid.flatmap(spoiled), anything)


# How an events frame names its sender: with the session its hello got, or
# as an impostor would (the name alone, a made-up session).
STAMPS = ("session", "name", "guessed")
frames = st.lists(
    st.tuples(st.sampled_from(KINDS), st.sampled_from(STAMPS)).flatmap(
        lambda ks: st.tuples(st.just(ks[0]), body_for(ks[0]), st.just(ks[1]))
    ),
    max_size=8,
)


def frame(kind: str, sender: str, seq: int, body: Any) -> bytes:
    # Packed here with msgpack, not bus.schema.encode: the test states the wire format.
    return msgpack.packb([1, kind, sender, seq, time.monotonic_ns(), body], use_bin_type=True)


# One known-good and one known-bad body per kind, whatever hypothesis draws.
SURE = {
    "hello": ({"role": "r", "pid": 1}, {"role": 5, "pid": 1}),
    "ready": ({"pid": 1}, {"pid": -1}),
    "heartbeat": ({}, []),
    "command": ({"name": "start", "args": {}}, {"name": "start", "args": [1]}),
    "ack": ({"command_seq": 1, "ok": True}, {"command_seq": 1, "ok": "yes"}),
    "log": (
        {
            "records": [
                {
                    "event": "e",
                    "actor": "a",
                    "pid": 1,
                    "mono_ns": 2,
                    "wall": 0.5,
                    "level": "info",
                    "extra": [1],
                }
            ]
        },
        {
            "records": [
                {"event": "e", "actor": "a", "pid": 1, "mono_ns": "2", "wall": 0.5, "level": "info"}
            ]
        },
    ),
    "kernel": (
        {"probe": "epoll", "events": []},
        {"probe": "epoll", "events": [{"type": "tcp_state", "ts": 1}]},
    ),
    "stats": ({"source": "s", "states": {"LISTEN": 1}}, {"source": "s", "states": "x"}),
    "eof": ({"last_seq": 3}, {"last_seq": None}),
}


def test_random_bodies_of_every_kind_never_break_the_receiver(endpoints: Endpoints) -> None:
    receiver = subprocess.Popen(
        [sys.executable, __file__, endpoints.events, endpoints.control],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    ctx: zmq.Context[Any] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"fuzz")
    push.connect(endpoints.events)
    dealer.connect(endpoints.control)
    sent = {"events": 0, "control": 0, "unstamped": 0}
    seq = {"events": 0, "control": 0}
    sessions: dict[str, str] = {}

    def send(kind: str, body: Any, sender: str = "fuzz", stamp: str = "session") -> None:
        channel = "events" if kind in EVENT_KINDS else "control"
        seq[channel] += 1
        # Event frames carry the session the sender's hello got.
        stamped: Any = sender
        if channel == "events":
            stamped = {
                "session": [sender, sessions[sender]],
                "name": sender,
                "guessed": [sender, "0" * 32],
            }[stamp]
            sent["unstamped"] += stamp != "session"
        (push if channel == "events" else dealer).send(frame(kind, stamped, seq[channel], body))
        sent[channel] += 1

    def hello(sender: str) -> None:
        send("hello", {"role": "fuzz", "pid": 1}, sender)
        answer: list[Any] = []
        while not answer or answer[1] == "heartbeat":
            assert dealer.poll(30_000), "no welcome"
            answer = msgpack.unpackb(dealer.recv())
        assert "welcome" == answer[1] and answer[5]["ok"], answer
        sessions[sender] = answer[5]["session"]

    try:
        hello("fuzz")
        hello(END)
        for kind, (good, bad) in SURE.items():
            send(kind, good)
            send(kind, bad)

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(frames)
        def fire(batch: list[tuple[str, Any, str]]) -> None:
            for kind, body, stamp in batch:
                send(kind, body, stamp=stamp)

        fire()
        send("eof", {"last_seq": 1}, sender=END)
        send("ready", {"pid": 0, "end": True})
        out, _ = receiver.communicate(timeout=300)
    finally:
        push.close(linger=0)
        dealer.close(linger=0)
        ctx.term()
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert 0 == receiver.returncode
    seen = json.loads(out)
    assert [] == seen["misshapen"]
    events, control = seen["events"], seen["control"]
    # Nothing vanished: each frame sent arrived, and was accepted or counted.
    assert (sent["events"], sent["control"]) == (events["frames"], control["frames"])
    for ledger in (events, control):
        assert ledger["frames"] == ledger["accepted"] + sum(ledger["rejected"].values())
    # What the receiver handed out is exactly what its ledgers accepted
    # (heartbeats are answered by the Hub, never handed out).
    handed = seen["handed"]
    assert events["accepted"] == sum(handed.get(k, 0) for k in EVENT_KINDS)
    # A frame without its sender's session is never accepted (one with a bad
    # body is counted as bad_body first).
    assert events["accepted"] <= sent["events"] - sent["unstamped"]
    assert events["rejected"].get("impostor", 0) <= sent["unstamped"]
    beats = control["accepted"] - sum(handed.get(k, 0) for k in KINDS if k not in EVENT_KINDS)
    assert beats >= 1  # the sure heartbeat
    # Each kind's known-bad body was refused for its body.
    assert events["rejected"].get("bad_body", 0) >= len(EVENT_KINDS)
    assert control["rejected"].get("bad_body", 0) >= len(KINDS) - len(EVENT_KINDS)
    assert all(handed.get(k, 0) >= 1 for k in KINDS if k != "heartbeat")
