"""Raw tracepoints for the TCP internals: whether this kernel can run them,
and the -D flags (struct offsets from its BTF) their C code reads with.

Why raw: a classic tracepoint program is skipped when any other
tracepoint or kprobe BPF program is already running on that CPU
(trace_call_bpf's per-CPU bpf_prog_active; the program's recursion_misses,
probes/progstats.py). tcp_probe, the retransmits, resets and congestion
changes fire in softirq, which interrupts other programs (fdio's syscall
hooks, other tools'), so some of their hits were lost. A raw tracepoint
program (BPF_PROG_TYPE_RAW_TRACEPOINT, 4.17+) runs through __bpf_trace_run,
which skips it only when the same program is already running on that CPU
(its own prog->active, ~6.0+; no check at all before).

A raw tracepoint hands its program the tracepoint's C arguments (struct sock
*, struct sk_buff *, ...), not the formatted fields, so the program reads
the fields from the kernel's structs at offsets this module takes from the
running kernel's BTF (probes/btf.py): the headers bcc compiles with are
6.1's. Each hook's argument list is checked against the ones the C code
knows (TP_PROTO per kernel version, below); on a kernel without BTF, with an
argument list not known here, or a field of another size, the probe stays
on its classic tracepoints (probes/tpformat.py), which `tcplab doctor` says.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

from probes import btf

# Struct fields the raw programs read: the C name (TCPLAB_OFF_<name>) ->
# (struct, member path, size the C code reads it as; 0 = a bitfield, which
# also gets TCPLAB_SHIFT_<name> and TCPLAB_BITS_<name>). inet_sock, the
# inet_connection_sock and tcp_sock each begin with the one before (and
# struct sock), so their offsets are from the socket pointer too.
FIELDS: dict[str, tuple[str, str, int]] = {
    "SK_FAMILY": ("sock", "__sk_common.skc_family", 2),
    "SK_STATE": ("sock", "__sk_common.skc_state", 1),
    "SK_DPORT": ("sock", "__sk_common.skc_dport", 2),  # inet->inet_dport
    "SK_DADDR": ("sock", "__sk_common.skc_daddr", 4),  # inet->inet_daddr
    "SK_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr", 16),
    "SK_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr", 16),
    "SK_PROTOCOL": ("sock", "sk_protocol", 2),  # a u16 of its own since 5.6
    "SK_ERR": ("sock", "sk_err", 4),
    "INET_SPORT": ("inet_sock", "inet_sport", 2),
    "INET_SADDR": ("inet_sock", "inet_saddr", 4),
    "ICSK_CA_STATE": ("inet_connection_sock", "icsk_ca_state", 0),
    "TP_SND_NXT": ("tcp_sock", "snd_nxt", 4),
    "TP_SND_UNA": ("tcp_sock", "snd_una", 4),
    "TP_SND_CWND": ("tcp_sock", "snd_cwnd", 4),
    "TP_SND_SSTHRESH": ("tcp_sock", "snd_ssthresh", 4),
    "TP_SND_WND": ("tcp_sock", "snd_wnd", 4),
    "TP_RCV_WND": ("tcp_sock", "rcv_wnd", 4),
    "TP_SRTT_US": ("tcp_sock", "srtt_us", 4),
    "TP_TOTAL_RETRANS": ("tcp_sock", "total_retrans", 4),
    "SKB_LEN": ("sk_buff", "len", 4),
    "SKB_DATA": ("sk_buff", "data", 8),
    "SKB_HEAD": ("sk_buff", "head", 8),
    "SKB_NETWORK_HEADER": ("sk_buff", "network_header", 2),
    "SKB_CB": ("sk_buff", "cb", 48),
    "TCB_GSO_SEGS": ("tcp_skb_cb", "tcp_gso_segs", 2),
    # inet_request_sock's ir_* names are #defines into its request_sock's sock_common.
    "IREQ_NUM": ("inet_request_sock", "req.__req_common.skc_num", 2),
    "IREQ_RMT_PORT": ("inet_request_sock", "req.__req_common.skc_dport", 2),
    "IREQ_LOC_ADDR": ("inet_request_sock", "req.__req_common.skc_rcv_saddr", 4),
    "IREQ_RMT_ADDR": ("inet_request_sock", "req.__req_common.skc_daddr", 4),
    "IREQ_V6_LOC_ADDR": ("inet_request_sock", "req.__req_common.skc_v6_rcv_saddr", 16),
    "IREQ_V6_RMT_ADDR": ("inet_request_sock", "req.__req_common.skc_v6_daddr", 16),
}

# The argument lists (TP_PROTO, qualifiers left out) the C code knows, per
# raw tracepoint; the name of an optional trailing argument becomes
# TCPLAB_RAW_<event>_<name> when this kernel passes it.
SK, SKB = "struct sock *", "struct sk_buff *"
PROTOS: dict[str, dict[tuple[str, ...], str]] = {
    # 4.16+ (the tcp_probe module became a tracepoint).
    "tcp:tcp_probe": {(SK, SKB): ""},
    # 4.15+ (sk, skb); a third, the transmit's result, on newer kernels (6.18; not 6.1).
    "tcp:tcp_retransmit_skb": {(SK, SKB): "", (SK, SKB, "int"): "err"},
    # 4.15+.
    "tcp:tcp_retransmit_synack": {(SK, "struct request_sock *"): ""},
    # 6.1+.
    "tcp:tcp_cong_state_set": {(SK, "u8"): ""},
    # 4.15+ (sk, skb); sk may be NULL from 6.10; the reason argument from 6.11.
    "tcp:tcp_send_reset": {(SK, SKB): "", (SK, SKB, "enum sk_rst_reason"): "reason"},
    # 4.15+.
    "tcp:tcp_receive_reset": {(SK,): ""},
    # 5.13+.
    "sock:inet_sk_error_report": {(SK,): ""},
}

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tcplab"


def _plain(arg: str) -> str:
    return arg.replace("const ", "").replace("volatile ", "").strip()


def _resolve() -> dict[str, object]:
    """{"flags": [...]} or {"why": "..."}: what reading the BTF says (~0.4 s)."""
    if not btf.VMLINUX.exists():
        return {"why": f"no {btf.VMLINUX} (a kernel without CONFIG_DEBUG_INFO_BTF)"}
    try:
        types = btf.BTF.vmlinux()
        flags = []
        for name, (struct_name, path, size) in FIELDS.items():
            m = types.member(struct_name, path)
            if (m.bits == 0) != (size != 0) or (size and m.size != size):
                got = f"{m.bits}-bit bitfield" if m.bits else f"{m.size} bytes"
                want = f"{size} bytes" if size else "a bitfield"
                return {"why": f"{struct_name}.{path} is {got} here, the raw programs read {want}"}
            flags.append(f"-DTCPLAB_OFF_{name}={m.offset}")
            if m.bits:
                if m.bit + m.bits > 8:
                    return {"why": f"{struct_name}.{path} spans bytes here"}
                flags += [f"-DTCPLAB_SHIFT_{name}={m.bit}", f"-DTCPLAB_BITS_{name}={m.bits}"]
        for tp, known in PROTOS.items():
            event = tp.partition(":")[2]
            args = types.raw_tracepoint_args(event)
            if args is None:
                continue  # the kernel lacks it: its handler is not compiled (TCPLAB_TP_<event>)
            plain = tuple(_plain(a) for a in args)
            if plain not in known:
                listed = ", ".join(args)
                return {"why": f"raw tracepoint {event} takes ({listed}): not a list tcplab knows"}
            if known[plain]:
                flags.append(f"-DTCPLAB_RAW_{event}_{known[plain]}")
    except (OSError, btf.BTFError) as e:
        return {"why": f"reading {btf.VMLINUX}: {e}"}
    return {"flags": flags}


def _cache_path() -> Path:
    """One file per kernel build (release and build string) and per version
    of this reader (the tables above, this file and btf.py)."""
    code = [Path(m.__file__ or "").read_text() for m in (btf,)] + [Path(__file__).read_text()]
    key = json.dumps([platform.release(), platform.version(), code])
    return CACHE_DIR / f"rawtp-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


_memo: dict[str, object] | None = None


def layout() -> dict[str, object]:
    """This kernel's answer ({"flags"} or {"why"}), cached per kernel build."""
    global _memo
    if _memo is None:
        path = _cache_path()
        try:
            _memo = json.loads(path.read_text())
        except (OSError, ValueError):
            _memo = _resolve()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(_memo))
                tmp.replace(path)
                for old in path.parent.glob("rawtp-*.json"):
                    if old != path:  # another kernel's or another version's
                        old.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only home: resolved again next time
    return _memo


def unusable() -> str | None:
    """Why the raw variant cannot run here, or None when it can."""
    why = layout().get("why")
    return str(why) if why else None


def flags() -> list[str]:
    """The -D flags of the raw variant (offsets, optional arguments)."""
    got = layout().get("flags")
    return [str(f) for f in got] if isinstance(got, list) else []
