"""Reading a BPF ring buffer straight from its mmap, in runs of raw records.

bcc (libbpf underneath) calls back into Python once per record through
ctypes, which costs microseconds per event: at a bomber's ~150k state
events/s on 2 shared cores that reader fell behind and the ring filled
(measured: 6-15% lost). This reader walks the same memory per the ring
buffer's stable ABI (>= 5.8, kernel/bpf/ringbuf.c): page 0 holds the
consumer position (we write it), page 1 the producer position, then the
data pages, mapped twice in a row so that a run of records that wraps is
still contiguous. Each record starts with an 8-byte header: u32 length with
a busy bit (reserved, still being written: stop there) and a discard bit
(skip it), u32 page offset; records are 8-byte aligned.

Every program submits exactly one struct per record (emit() in
common.bpf.c), so records sit at a fixed stride and the pending region is
one numpy structured array (header length, record): the lengths are
checked at once, and the payloads of the leading run of committed records
of our size are copied out in one go. No Python work per record: what
leaves here is bytes, whole records back to back (bus/rawbatch.py).
Anything else (busy, discarded, of another size) is handled one record at
a time.

It relies on x86-64 ordering loads with loads and stores with stores (TSO):
every header is read before the records it vouches for, the consumer
position written after them. Weaker CPUs (arm64) need barriers Python
cannot issue, so there the loader keeps bcc's reader (probes/loader.py
MMAP_READER).
"""

from __future__ import annotations

import mmap
import struct

import numpy as np

# At most this much is read per call, so that a full ring cannot hold the
# caller's loop (heartbeats, commands) for long; what is left is read at
# the next poll, which then does not wait (see ProbeSet.poll).
READ_MAX_BYTES = 4 << 20
# The header's flag bits (include/uapi/linux/bpf.h BPF_RINGBUF_BUSY_BIT,
# BPF_RINGBUF_DISCARD_BIT) and its size (BPF_RINGBUF_HDR_SZ).
BUSY = 1 << 31
DISCARD = 1 << 30
HDR = 8


class RingReader:
    """One ring buffer map's records of `record_size` bytes, read from its mmap."""

    def __init__(self, map_fd: int, capacity: int, record_size: int) -> None:
        page = mmap.PAGESIZE
        self.capacity = capacity
        self.mask = capacity - 1
        self.length = record_size  # the header's length field of a record of ours
        self.stride = (HDR + record_size + 7) & ~7
        # One slot of the ring: the header's length, the record, the padding.
        self.slot = np.dtype(
            {
                "names": ["length", "record"],
                "formats": ["<u4", f"V{record_size}"],
                "offsets": [0, HDR],
                "itemsize": self.stride,
            }
        )
        self.skipped = 0  # records committed with another size: not ours, counted as drops
        self._cons = mmap.mmap(
            map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        self._data = mmap.mmap(
            map_fd, page + 2 * capacity, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._page = page
        self.peak = 0

    def used(self) -> int:
        prod = struct.unpack_from("=Q", self._data, 0)[0]
        cons = struct.unpack_from("=Q", self._cons, 0)[0]
        return int(prod - cons)

    def read(self) -> bytes:
        """The committed records not yet consumed (up to READ_MAX_BYTES of
        ring), back to back without headers, in order; then consume them."""
        cons = struct.unpack_from("=Q", self._cons, 0)[0]
        prod = struct.unpack_from("=Q", self._data, 0)[0]
        self.peak = max(self.peak, prod - cons)
        stride, ours, base, mask = self.stride, self.length, self._page, self.mask
        prod = min(prod, cons + READ_MAX_BYTES // stride * stride)
        parts: list[bytes] = []
        # The kernel may only reuse this memory once the consumer position
        # moves past it (below), so copying straight from the map is safe.
        while cons < prod:
            start = base + (cons & mask)
            n = (prod - cons) // stride
            if n:
                slots = np.frombuffer(self._data, self.slot, count=n, offset=start)
                others = np.flatnonzero(slots["length"] != ours)
                run = int(others[0]) if others.size else n
                if run:
                    parts.append(slots["record"][:run].tobytes())
                    cons += run * stride
                    del slots  # no view may outlive the map (close())
                    continue
                del slots
            # One record that cannot start a run: busy, discarded, of
            # another size, or ours with the read's cap inside it (which
            # records of another size before it can cause).
            length = struct.unpack_from("=I", self._data, start)[0]
            if length & BUSY:
                break
            if length == ours:
                parts.append(self._data[start + HDR : start + HDR + ours])
            elif not length & DISCARD:
                self.skipped += 1
            cons += ((length & ~(BUSY | DISCARD)) + HDR + 7) & ~7
        struct.pack_into("=Q", self._cons, 0, cons)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        self._cons.close()
        self._data.close()
