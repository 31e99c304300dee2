"""The kernel's own count of a BPF program's skipped runs (recursion_misses).

A tracepoint program is not run when the tracepoint fires on a CPU where a
BPF program is already running (trace_call_bpf's per-CPU bpf_prog_active):
a softirq that interrupts a program running in task context (a syscall or
tcp_probe hook in a socket's backlog) and retransmits a segment there finds
the CPU busy, and that event is lost without a trace. The kernel counts
these per program (5.12+), readable with BPF_OBJ_GET_INFO_BY_FD. Measured
on 6.18 in lossy-link runs: 0 to 2 tcp_retransmit_skb runs skipped per run,
each one Tcp RetransSegs counted that no event shows.
"""

from __future__ import annotations

import ctypes
import os

_BPF_OBJ_GET_INFO_BY_FD = 15  # enum bpf_cmd (uapi/linux/bpf.h)
_SYS_BPF = 321  # x86_64


class _ProgInfo(ctypes.Structure):
    """struct bpf_prog_info (uapi/linux/bpf.h) up to recursion_misses (5.12+)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def recursion_misses(prog_fd: int) -> int | None:
    """Runs of the program the kernel skipped, or None where it cannot say
    (before 5.12 the field is not filled: info_len comes back shorter)."""
    info = _ProgInfo()
    attr = _InfoAttr(prog_fd, ctypes.sizeof(info), ctypes.addressof(info))
    if _libc.syscall(_SYS_BPF, _BPF_OBJ_GET_INFO_BY_FD, ctypes.byref(attr), ctypes.sizeof(attr)):
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    if attr.info_len < _ProgInfo.recursion_misses.offset + 8:
        return None
    return int(info.recursion_misses)
