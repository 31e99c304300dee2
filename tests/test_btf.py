"""probes/btf.py: the BTF reader, on blobs built here and on this kernel's.

The built blobs hold what the kernel's BTF has and the reader must handle:
a member inside an anonymous union inside a struct, a nested named struct,
bitfields in both encodings (kind_flag, as pahole writes vmlinux, and the
old one where the INT carries the bit offset), and a btf_trace_ typedef.
This kernel's struct offsets are checked against bpftool's own dump.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from probes import btf
from probes.btf import BTF, BTFError, Member

VMLINUX = Path("/sys/kernel/btf/vmlinux")


class Blob:
    """A little-endian BTF blob: types appended in id order (from 1)."""

    def __init__(self) -> None:
        self.strings = b"\0"
        self.types = b""
        self.count = 0

    def name(self, text: str) -> int:
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, kind: int, name: str, vlen: int, size_or_type: int, tail: bytes = b"",
            kind_flag: bool = False) -> int:  # fmt: skip
        info = (kind << 24) | vlen | (int(kind_flag) << 31)
        self.types += struct.pack("<III", self.name(name) if name else 0, info, size_or_type)
        self.types += tail
        self.count += 1
        return self.count

    def int_(self, name: str, size: int, bits: int | None = None, offset: int = 0) -> int:
        enc = (offset << 16) | (bits if bits is not None else size * 8)
        return self.add(btf.INT, name, 0, size, struct.pack("<I", enc))

    def struct_(self, kind: int, name: str, size: int, members: list[tuple[str, int, int]],
                kind_flag: bool = False) -> int:  # fmt: skip
        tail = b"".join(struct.pack("<III", self.name(n) if n else 0, t, o) for n, t, o in members)
        return self.add(kind, name, len(members), size, tail, kind_flag)

    def data(self) -> bytes:
        header = struct.pack("<HBBIIIII", btf.MAGIC, 1, 0, 24, 0, len(self.types),
                             len(self.types), len(self.strings))  # fmt: skip
        return header + self.types + self.strings


def sample() -> BTF:
    b = Blob()
    u8, u16, u32 = b.int_("u8", 1), b.int_("u16", 2), b.int_("u32", 4)
    # struct inner { u16 port; u32 addr; }  (addr at byte 4)
    inner = b.struct_(btf.STRUCT, "inner", 8, [("port", u16, 0), ("addr", u32, 32)])
    # union { u32 pair; struct { u16 lo; u16 hi; }; }  (anonymous both)
    anon_s = b.struct_(btf.STRUCT, "", 4, [("lo", u16, 0), ("hi", u16, 16)])
    anon_u = b.struct_(btf.UNION, "", 4, [("pair", u32, 0), ("", anon_s, 0)])
    # struct outer { u32 a; union {...}; struct inner in; u8 st:5, flag:1; (kind_flag) }
    b.struct_(
        btf.STRUCT,
        "outer",
        24,
        [("a", u32, 0), ("", anon_u, 32), ("in", inner, 64), ("st", u8, (5 << 24) | 131),
         ("flag", u8, (1 << 24) | 136)],
        kind_flag=True,
    )  # fmt: skip
    # The old bitfield encoding: the INT says 3 bits at bit 2 of its byte.
    old_bits = b.int_("u8", 1, bits=3, offset=2)
    b.struct_(btf.STRUCT, "old", 4, [("x", u8, 0), ("y", old_bits, 8)])
    # typedef void (*btf_trace_ev)(void *, const struct outer *, u8);
    void_ptr = b.add(btf.PTR, "", 0, 0)
    outer_id = 7  # u8 u16 u32 inner anon_s anon_u outer
    const_outer = b.add(btf.CONST, "", 0, outer_id)
    outer_ptr = b.add(btf.PTR, "", 0, const_outer)
    params = struct.pack("<IIIIII", 0, void_ptr, 0, outer_ptr, 0, u8)
    proto = b.add(btf.FUNC_PROTO, "", 3, 0, params)
    b.add(btf.TYPEDEF, "btf_trace_ev", 0, b.add(btf.PTR, "", 0, proto))
    return BTF(b.data())


def test_members_through_anonymous_and_nested_structs() -> None:
    t = sample()
    assert t.member("outer", "a") == Member(0, 4)
    assert t.member("outer", "pair") == Member(4, 4)
    assert t.member("outer", "hi") == Member(6, 2)
    assert t.member("outer", "in.addr") == Member(12, 4)
    assert t.member("outer", "in") == Member(8, 8)


def test_bitfields_in_both_encodings() -> None:
    t = sample()
    assert t.member("outer", "st") == Member(16, 0, 3, 5)
    assert t.member("outer", "flag") == Member(17, 0, 0, 1)
    assert t.member("old", "y") == Member(1, 0, 2, 3)


def test_raw_tracepoint_arguments() -> None:
    t = sample()
    assert t.raw_tracepoint_args("ev") == ["const struct outer *", "u8"]
    assert t.raw_tracepoint_args("nope") is None


def test_what_is_not_there_is_one_clear_error() -> None:
    t = sample()
    with pytest.raises(BTFError, match="struct outer has no member in.nope"):
        t.member("outer", "in.nope")
    with pytest.raises(BTFError, match="no struct absent in this kernel's BTF"):
        t.member("absent", "x")
    with pytest.raises(BTFError, match="not BTF"):
        BTF(b"\0" * 24)


def bpftool_members() -> dict[tuple[str, str], tuple[int, int]]:
    """(struct, member) -> (bits_offset, bitfield_size) for the named top-level
    members of every named struct, from `bpftool btf dump ... format raw`."""
    out = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(VMLINUX), "format", "raw"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    members: dict[tuple[str, str], tuple[int, int]] = {}
    current = None
    head = re.compile(r"^\[\d+\] STRUCT '([^']+)'")
    member = re.compile(r"^\t'([^']+)' type_id=\d+ bits_offset=(\d+)(?: bitfield_size=(\d+))?")
    for line in out.splitlines():
        if line.startswith("["):
            m = head.match(line)
            current = m.group(1) if m else None
        elif current:
            m = member.match(line)
            if m:
                members.setdefault((current, m.group(1)), (int(m.group(2)), int(m.group(3) or 0)))
    return members


@pytest.mark.skipif(not VMLINUX.exists(), reason="no kernel BTF: nothing to compare")
def test_this_kernels_offsets_match_bpftool() -> None:
    """Every top-level field the raw programs read (probes/rawtp.py FIELDS:
    16 of them on 6.18) is where bpftool, libbpf's own reader, says it is."""
    if shutil.which("bpftool") is None:
        pytest.fail("bpftool is missing: sudo scripts/provision.sh installs it")
    from probes.rawtp import FIELDS

    theirs = bpftool_members()
    ours = BTF.vmlinux()
    checked = 0
    for struct_name, path, _size in FIELDS.values():
        if (struct_name, path) not in theirs:
            continue  # nested or in an anonymous member: bpftool lists each level apart
        bits, width = theirs[(struct_name, path)]
        m = ours.member(struct_name, path)
        assert (m.offset * 8 + m.bit, m.bits) == (bits, width), (struct_name, path)
        checked += 1
    assert checked >= 12
