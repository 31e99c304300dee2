"""The running kernel's own type information (BTF), read from /sys/kernel/btf/vmlinux.

The raw tracepoint programs (probes/rawtp.py) read struct sock, tcp_sock and
sk_buff fields themselves, at offsets that change between kernel builds;
the kernel headers bcc compiles with here are Debian 12's 6.1 ones, wrong
for 6.18's structs. BTF describes the running kernel's structs exactly.

The format is the kernel's Documentation/bpf/btf.rst: a header, then type
records (one `struct btf_type` each, 12 bytes, plus a kind-specific tail),
then a string section. Type ids count from 1 in record order (0 is void).
No package on PyPI or Debian reads BTF from Python (libbpf's btf__ API is C
and bcc does not expose it), hence this reader: it reads what tcplab needs,
struct member offsets (through nested and anonymous structs and unions,
bitfields included) and the prototypes of raw tracepoints.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
MAGIC = 0xEB9F

# Kinds (btf.rst "Type encoding") and the size of each kind's tail: fixed,
# or per member (vlen of them).
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_TAIL = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_MEMBER = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}
_PREFIX = {STRUCT: "struct ", UNION: "union ", ENUM: "enum ", ENUM64: "enum ", FWD: "struct "}
# Kinds that only qualify or rename another type.
_ALIASES = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


class BTFError(RuntimeError):
    """This BTF does not say what was asked (or is not BTF)."""


@dataclass(frozen=True)
class Member:
    """Where a member sits: bytes from the start of the outer struct, its
    size in bytes, and for a bitfield its first bit (in the byte at
    `offset`) and width."""

    offset: int
    size: int
    bit: int = 0
    bits: int = 0


@dataclass
class _Type:
    kind: int
    name: str
    size_or_type: int  # size for INT/STRUCT/UNION/ENUM, the referred type id otherwise
    kind_flag: bool
    tail: bytes


class BTF:
    """The types of one BTF blob, indexed by name on first use."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BTFError("too short for a BTF header")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != MAGIC:
            raise BTFError(f"bad magic {magic:#x}: not BTF (or not little-endian)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self._types: list[_Type | None] = [None]  # id 0: void
        self._by_name: dict[tuple[int, str], int] = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            pos += 12
            tail_len = _TAIL.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
            name = self._string(name_off) if name_off else ""
            t = _Type(kind, name, size_or_type, bool(info >> 31), data[pos : pos + tail_len])
            pos += tail_len
            if name and kind in (STRUCT, UNION, TYPEDEF, ENUM, ENUM64):
                self._by_name.setdefault((kind, name), len(self._types))
            self._types.append(t)

    @classmethod
    def vmlinux(cls) -> BTF:
        return cls(VMLINUX.read_bytes())

    def _string(self, off: int) -> str:
        return self._strings[off : self._strings.index(b"\0", off)].decode()

    def _type(self, tid: int) -> _Type:
        t = self._types[tid]
        if t is None:
            raise BTFError("void has no members")
        return t

    def _strip(self, tid: int) -> int:
        """The type under typedefs and qualifiers."""
        while tid and self._type(tid).kind in _ALIASES:
            tid = self._type(tid).size_or_type
        return tid

    def size_of(self, tid: int) -> int:
        tid = self._strip(tid)
        t = self._type(tid)
        if t.kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT):
            return t.size_or_type
        if t.kind == PTR:
            return 8
        if t.kind == ARRAY:
            elem, _index, n = struct.unpack_from("<III", t.tail)
            return self.size_of(elem) * n
        raise BTFError(f"no size for a type of kind {t.kind}")

    def struct_id(self, name: str) -> int:
        for kind in (STRUCT, UNION):
            if (kind, name) in self._by_name:
                return self._by_name[(kind, name)]
        raise BTFError(f"no struct {name} in this kernel's BTF")

    def _members(self, tid: int) -> list[tuple[str, int, int, int]]:
        """(name, type id, bit offset, bitfield width or 0) of a struct or union."""
        t = self._type(tid)
        out = []
        for i in range(len(t.tail) // 12):
            name_off, mtype, off = struct.unpack_from("<III", t.tail, 12 * i)
            bits = 0
            if t.kind_flag:
                bits, off = off >> 24, off & 0xFFFFFF
            else:
                # Old encoding: the bitfield is described by the INT itself.
                base = self._type(self._strip(mtype)) if self._strip(mtype) else None
                if base is not None and base.kind == INT:
                    enc = struct.unpack_from("<I", base.tail)[0]
                    if enc & 0xFF != base.size_or_type * 8:
                        bits, off = enc & 0xFF, off + ((enc >> 16) & 0xFF)
            out.append((self._string(name_off) if name_off else "", mtype, off, bits))
        return out

    def _find(self, tid: int, name: str) -> tuple[int, int, int] | None:
        """(type id, bit offset, width) of member `name` of struct/union tid,
        looking into anonymous members."""
        for mname, mtype, off, bits in self._members(tid):
            if mname == name:
                return mtype, off, bits
            inner = self._strip(mtype)
            if not mname and inner and self._type(inner).kind in (STRUCT, UNION):
                found = self._find(inner, name)
                if found:
                    return found[0], off + found[1], found[2]
        return None

    def member(self, struct_name: str, path: str) -> Member:
        """Where `path` ("a.b.c", through named and anonymous members) is in struct_name."""
        tid, bitoff, bits = self.struct_id(struct_name), 0, 0
        for part in path.split("."):
            inner = self._strip(tid)
            if self._type(inner).kind not in (STRUCT, UNION):
                raise BTFError(f"{struct_name}.{path}: {part} is not inside a struct")
            found = self._find(inner, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path}")
            tid, off, bits = found
            bitoff += off
        if bits:
            return Member(bitoff // 8, 0, bitoff % 8, bits)
        if bitoff % 8:
            raise BTFError(f"{struct_name}.{path} is not byte-aligned")
        return Member(bitoff // 8, self.size_of(tid))

    def type_name(self, tid: int) -> str:
        """A C-like spelling of a type: "const struct sock *", "int"."""
        if tid == 0:
            return "void"
        t = self._type(tid)
        if t.kind == PTR:
            return self.type_name(t.size_or_type) + " *"
        if t.kind == CONST:
            return "const " + self.type_name(t.size_or_type)
        if t.kind == VOLATILE:
            return "volatile " + self.type_name(t.size_or_type)
        if t.kind in (RESTRICT, TYPE_TAG):
            return self.type_name(t.size_or_type)
        return _PREFIX.get(t.kind, "") + t.name

    def raw_tracepoint_args(self, event: str) -> list[str] | None:
        """The C argument types a raw tracepoint hands its programs (the
        tracepoint's TP_PROTO, from the kernel's btf_trace_<event> typedef,
        its leading void *data left out), or None when there is no such typedef."""
        tid = self._by_name.get((TYPEDEF, f"btf_trace_{event}"))
        if tid is None:
            return None
        proto = self._strip(self._type(tid).size_or_type)  # a pointer to a FUNC_PROTO
        if self._type(proto).kind == PTR:
            proto = self._strip(self._type(proto).size_or_type)
        t = self._type(proto)
        if t.kind != FUNC_PROTO:
            raise BTFError(f"btf_trace_{event} is not a function pointer")
        types = [struct.unpack_from("<II", t.tail, 8 * i)[1] for i in range(len(t.tail) // 8)]
        return [self.type_name(x) for x in types[1:]]
