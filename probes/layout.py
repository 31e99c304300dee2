"""The layout of a probe's records, from the C definition in events.h.

bcc parses the struct a program writes into its `events` map and builds a
ctypes class of it (what `table.event()` decodes with). `layout_of()` reads
that class into a bus/rawbatch.py Layout (field names, numpy formats,
offsets, record size), so that raw records are described by the compiler's
own view of events.h, never by a second definition in Python.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from bus.rawbatch import Layout, make_layout


def _format(ctype: Any) -> str:
    if issubclass(ctype, ctypes.Array):
        base, n = ctype._type_, ctype._length_
        if base is ctypes.c_char:  # char comm[16]: a byte string
            return f"|S{n}"
        return f"({n},){_format(base)}"
    return str(np.dtype(ctype).str)  # "<u8", "|u1": byte order stated


def layout_of(cls: Any) -> Layout:
    """The Layout of a ctypes.Structure class (bcc's class for a program's events)."""
    names, formats, offsets = [], [], []
    for name, ctype in cls._fields_:
        names.append(name)
        formats.append(_format(ctype))
        offsets.append(getattr(cls, name).offset)
    return make_layout(names, formats, offsets, ctypes.sizeof(cls))


def event_layout(bpf: Any) -> Layout:
    """The Layout of what a compiled program writes into its `events` map."""
    from bcc.table import _get_event_class  # what table.event() decodes with

    return layout_of(_get_event_class(bpf[b"events"]))
