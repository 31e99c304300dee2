"""The TCP internals' numbering, shared by the BPF programs and the decoders.

probes/program.py hands these to the C code as -D flags (the position in
each tuple is the number), so this is their one definition:
tcp_probe_event.why (TCPLAB_SAMPLE_*) and tcp_sock_event.what
(TCPLAB_EV_*), both in probes/events.h. Congestion states and reset
reasons are the kernel's own numbering.
"""

from __future__ import annotations

# The probes (probes/*.bpf.c) whose records these are.
INTERNALS = ("tcp_probe", "tcp_events")
# Why a tcp:tcp_probe hit became an event (probes/tcp_probe.bpf.c).
SAMPLE_WHY = ("first", "cwnd", "zero_window", "period")
# Which tracepoint a tcp_sock_event came from (probes/tcp_events.bpf.c).
SOCK_EVENTS = (
    "retransmit",
    "cong_state",
    "send_reset",
    "receive_reset",
    "sk_error",
    "retransmit_synack",
)
# enum tcp_ca_state (include/net/tcp.h), the code of a cong_state event.
CONG_STATES = ("Open", "Disorder", "CWR", "Recovery", "Loss")
# ssthresh before the first loss: TCP_INFINITE_SSTHRESH.
INFINITE_SSTHRESH = 0x7FFFFFFF
