"""VM self-check for `make test-kernels`: kprobes and matching headers work here.

Loads a BCC kprobe on tcp_set_state that reads the socket's ports and old
state from `struct sock` (right only with headers matching the running
kernel), opens and closes one loopback connection, and checks that the kprobe
saw the client and the server side go through their expected states.
Exit 0 when it did, 1 with the transitions seen when it did not.

Runs inside the VM before the probe suite, independently of probes/, so a
broken VM is told apart from a broken probe.
"""

from __future__ import annotations

import socket
import sys
import time

from bcc import BPF

PROGRAM = r"""
#include <net/sock.h>

struct transition {
    u16 lport;
    u16 dport;
    u8 oldstate;
    u8 newstate;
};
BPF_PERF_OUTPUT(transitions);

int kprobe__tcp_set_state(struct pt_regs *ctx, struct sock *sk, int state)
{
    struct transition t = {};
    u16 dport = 0;
    // Explicit reads: BCC's automatic rewrite of sk->... misses macro arguments.
    bpf_probe_read_kernel(&t.lport, sizeof(t.lport), &sk->__sk_common.skc_num);
    bpf_probe_read_kernel(&dport, sizeof(dport), &sk->__sk_common.skc_dport);
    bpf_probe_read_kernel(&t.oldstate, sizeof(t.oldstate), &sk->__sk_common.skc_state);
    t.dport = ntohs(dport);
    t.newstate = state;
    transitions.perf_submit(ctx, &t, sizeof(t));
    return 0;
}
"""

STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
}
CLIENT_EXPECTED = {"SYN_SENT", "ESTABLISHED", "FIN_WAIT1"}
SERVER_EXPECTED = {"ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"}


def main() -> int:
    started = time.monotonic()
    bpf = BPF(text=PROGRAM)
    compiled = time.monotonic() - started
    seen: list[tuple[int, int, str, str]] = []

    def record(_cpu: int, data: int, _size: int) -> None:
        t = bpf["transitions"].event(data)
        seen.append((t.lport, t.dport, STATES.get(t.oldstate, "?"), STATES.get(t.newstate, "?")))

    bpf["transitions"].open_perf_buffer(record)

    with socket.create_server(("127.0.0.1", 0)) as server:
        server_port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", server_port))
        client_port = client.getsockname()[1]
        accepted, _ = server.accept()
        client.close()
        accepted.recv(1)  # the client's FIN: the server side is in CLOSE_WAIT
        accepted.close()

    def states(lport: int, dport: int) -> set[str]:
        return {new for lp, dp, _old, new in seen if (lp, dp) == (lport, dport)}

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        bpf.perf_buffer_poll(timeout=200)
        client_ok = CLIENT_EXPECTED <= states(client_port, server_port)
        server_ok = SERVER_EXPECTED <= states(server_port, client_port)
        if client_ok and server_ok:
            break

    mine = [s for s in seen if {s[0], s[1]} == {client_port, server_port}]
    for lport, dport, old, new in mine:
        print(f"  tcp_set_state {lport:>5} -> {dport:<5} {old:>11} -> {new}")
    if not (client_ok and server_ok):
        print(
            f"kprobe_check: FAILED: expected client {sorted(CLIENT_EXPECTED)} and server "
            f"{sorted(SERVER_EXPECTED)} among the transitions above",
            file=sys.stderr,
        )
        return 1
    print(
        f"kprobe_check: ok: kprobe on tcp_set_state saw {len(mine)} transitions of one loopback "
        f"connection (BCC compile {compiled:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
