"""Bus robustness: hostile frames against a live Hub in another process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.endpoints import ipc_endpoints, make_run_dir
from bus.schema import MAX_FRAME_BYTES, Kind, Sequencer, encode
from bus.transport import ControlClient

# The receiver: a Hub that runs until the "probe" sender said eof on events
# and "fuzz" said hello on control (sent last on each), then prints what its
# ledgers saw and exits 0. Any crash exits non-zero.
RECEIVER = """
import json, sys, time
from bus.hub import Hub
hub = Hub(sys.argv[1], sys.argv[2])
end = time.monotonic() + 120
eof = done = False
while time.monotonic() < end and not done:
    for ch, env in hub.poll(100):
        eof = eof or (env.kind == "eof" and env.sender == "probe")
    done = eof and "fuzz" in hub.actors
print(json.dumps({"events": hub.events_ledger.summary(),
                  "control": hub.control_ledger.summary()}, default=str))
hub.close()
sys.exit(0 if done else 5)
"""

# Envelope-shaped values that are wrong in some way (or occasionally right).
plain = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=8),
    st.binary(max_size=8),
)
body = st.dictionaries(st.text(max_size=8), plain, max_size=4)
shaped = st.lists(
    st.one_of(
        st.sampled_from([0, 1, 2, "1"]),
        st.sampled_from([k.value for k in Kind] + ["nope", 7]),
        st.text(min_size=1, max_size=8).filter(lambda s: s != "probe"),
        st.integers(min_value=-5, max_value=2**64 - 1),
        body,
        plain,
    ),
    max_size=7,
).map(lambda xs: msgpack.packb(xs, use_bin_type=True))
valid = st.builds(
    lambda name, n: encode(Sequencer(name).make(Kind.STATS, {"source": name, "n": n})),
    st.text(min_size=1, max_size=8).filter(lambda s: s != "probe"),
    st.integers(min_value=0, max_value=10),
)
truncated = st.tuples(valid, st.integers(min_value=1, max_value=20)).map(lambda t: t[0][: -t[1]])
frames = st.lists(st.one_of(st.binary(max_size=300), shaped, truncated), max_size=12)


def test_hostile_frames_never_crash_or_corrupt(tmp_path: Path) -> None:
    """Random, malformed, truncated, oversized and unknown-kind frames on both
    sockets are counted, the receiver keeps running, and a well-behaved
    sender interleaved with them arrives complete with no gap."""
    ep = ipc_endpoints(make_run_dir(str(tmp_path)))
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, ep.events, ep.control], stdout=subprocess.PIPE
    )
    ctx: zmq.Context[Any] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"fuzz")
    push.connect(ep.events)
    dealer.connect(ep.control)
    # The well-behaved sender says hello first: the receiver takes event
    # frames only with the session its hello got.
    hello = ControlClient(ep.control, "probe")
    probe = Sequencer("probe", hello.hello("probe"))
    sent = {"events": 0, "multipart": 0}
    try:

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(frames)
        def fire(batch: list[bytes]) -> None:
            for frame in batch:
                push.send(frame)
                dealer.send(frame)
                dealer.send_multipart([frame, b"extra"])
            push.send(encode(probe.make(Kind.STATS, {"source": "probe"})))
            sent["events"] += len(batch) + 1
            sent["multipart"] += len(batch)

        fire()
        push.send(b"\x00" * (MAX_FRAME_BYTES + 1))
        push.send(encode(probe.eof()))
        dealer.send(encode(Sequencer("fuzz").make(Kind.HELLO, {"role": "fuzz", "pid": 1})))
        sent["events"] += 2
        out, _ = receiver.communicate(timeout=120)
    finally:
        push.close(linger=0)
        dealer.close(linger=0)
        hello.close(linger_ms=0)
        ctx.term()
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert 0 == receiver.returncode
    seen = json.loads(out)
    events = seen["events"]
    assert sent["events"] == events["frames"]
    assert {"last_seq": probe.last_seq, "eof_seq": probe.last_seq, "complete": True} == events[
        "senders"
    ]["probe"]
    assert not [g for g in events["gaps"] if g["sender"] == "probe"]
    assert 1 == events["rejected"].get("oversized")
    assert events["rejected"].get("malformed", 0) > 0
    control = seen["control"]
    assert sent["multipart"] == control["rejected"].get("multipart", 0)
    # Every control message arrived (one single-frame and one multipart per
    # hostile frame, and the two hellos), and each was accepted or counted.
    assert 2 * sent["multipart"] + 2 == control["frames"]
    for ledger in (events, control):
        assert ledger["frames"] == ledger["accepted"] + sum(ledger["rejected"].values())
