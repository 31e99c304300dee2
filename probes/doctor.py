"""`tcplab doctor`: what this machine offers the probes, and how to fix the rest.

Every check is a `Check` (ok or not, what was found, the fix). The last one
is real: it compiles and attaches the tcp_state program, makes one loopback
connection and waits for its events, then detaches.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bus.rawbatch import make_body
from bus.rawconvert import batch_events
from probes import rawtp, tpformat
from probes.loader import Filters, ProbeSet
from probes.plan import (
    INTERNALS,
    KPROBE_SYSCALLS,
    OPTIONAL_TRACEPOINTS,
    PROBES,
    RINGBUF_SINCE,
    TRACEPOINT_HOOKS,
    AttachPlan,
    ProbeError,
    kernel_functions,
    kernel_version,
    kprobes_supported,
    syscall_function,
    tracefs,
    tracepoint_exists,
)

SELF_CHECK_S = 5.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    # A missing optional piece (kprobes where tracepoints work) is reported
    # but does not make the machine unfit.
    required: bool = True


def headers_release(build: Path) -> str | None:
    """The `uname -r` a kernel built from these headers reports: UTS_RELEASE.

    utsrelease.h comes first because distributions rewrite kernel.release:
    Debian's 6.1.0-56-amd64 headers hold "6.1.192" there but UTS_RELEASE
    "6.1.0-56-amd64", which is what the running kernel reports.
    """
    for f in (build / "include/generated/utsrelease.h", build / "include/config/kernel.release"):
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        return text.split('"')[1] if '"' in text else text
    return None


def checks() -> list[Check]:
    release = platform.release()
    out = [Check("kernel", True, f"{release} ({platform.machine()})")]
    btf = Path("/sys/kernel/btf/vmlinux")
    out.append(
        Check(
            "BTF",
            btf.exists(),
            str(btf) if btf.exists() else "no /sys/kernel/btf/vmlinux",
            "not needed by BCC; a kernel with CONFIG_DEBUG_INFO_BTF=y has it",
            required=False,
        )
    )
    root = tracefs()
    out.append(
        Check(
            "tracefs",
            root is not None,
            f"mounted at {root}" if root else "not mounted",
            "mount -t tracefs tracefs /sys/kernel/tracing",
        )
    )
    seen: set[str] = set()  # a tracepoint several probes use is checked once
    for probe in PROBES:
        for hook in TRACEPOINT_HOOKS[probe]:
            if hook.target in seen:
                continue
            seen.add(hook.target)
            present = tracepoint_exists(hook.target)
            fix = "mount tracefs; syscall tracepoints need CONFIG_FTRACE_SYSCALLS"
            optional = hook.target in OPTIONAL_TRACEPOINTS.get(probe, set())
            if "pwait2" in hook.target:
                fix = "epoll_pwait2 exists since 5.11: the other epoll calls are traced without it"
            elif optional:
                fix = "since 6.3: fdio counts without it, but its records carry no skaddr"
            if probe in INTERNALS:
                fix = f"{probe} runs without it: {tpformat.MEANING.get(hook.target, '')}"
            out.append(
                Check(
                    f"tracepoint {hook.target}",
                    present,
                    "present" if present else "missing",
                    fix,
                    required=probe not in INTERNALS and not optional,
                )
            )
    raw_why = rawtp.unusable()
    out.append(
        Check(
            "TCP internals on raw tracepoints",
            raw_why is None,
            "yes: struct offsets from this kernel's BTF (probes/rawtp.py)"
            if raw_why is None
            else f"no: {raw_why}",
            "classic tracepoints in use: their hits are skipped while another BPF program "
            "runs on that CPU (counted as misses); a kernel with BTF avoids that",
            required=False,
        )
    )
    for probe in INTERNALS:
        # What the format files of this kernel lack (fields that came later);
        # the raw tracepoints read no format file.
        gaps = [g for g in tpformat.gaps(root, probe) if " missing:" not in g]
        out.append(
            Check(
                f"{probe} layout",
                not gaps,
                "; ".join(gaps) or "every field it reads is there",
                "fallbacks in use (probes/tpformat.py); a newer kernel has the fields",
                required=False,
            )
        )
    kp = kprobes_supported()
    out.append(
        Check(
            "kprobes",
            kp,
            "supported" if kp else "not supported (CONFIG_KPROBES is off)",
            "tracepoints cover everything here; the kprobe variants are only a fallback "
            "(they compile and pass the verifier: tests/test_probe_loader.py)",
            required=False,
        )
    )
    targets = ["tcp_set_state"] + [
        syscall_function(call) or f"sys_{call}" for p in KPROBE_SYSCALLS.values() for call, *_ in p
    ]
    funcs = kernel_functions()
    for t in targets:
        out.append(
            Check(
                f"kprobe target {t}",
                kp and t in funcs,
                ("in kallsyms" if t in funcs else "not in kallsyms")
                + ("" if kp else ", but kprobes cannot attach"),
                "only needed where the tracepoint is missing",
                required=False,
            )
        )
    ring = kernel_version() >= RINGBUF_SINCE
    out.append(
        Check(
            "ring buffer",
            ring,
            "BPF ring buffer (>= 5.8)" if ring else "kernel < 5.8: perf buffer fallback",
            "a kernel >= 5.8 gives ordered, cheaper delivery",
            required=False,
        )
    )
    build = Path(f"/lib/modules/{release}/build")
    if not build.exists():
        out.append(
            Check(
                "headers",
                False,
                f"{build} missing",
                "sudo scripts/provision.sh (installs and links linux-headers)",
            )
        )
    else:
        hrel = headers_release(build.resolve())
        match = hrel == release
        out.append(
            Check(
                "headers",
                True,
                f"{build} -> {build.resolve()} ({hrel or 'unknown version'})"
                + (
                    ""
                    if match
                    else ": does not match the running kernel; fine for "
                    "tracepoints (layouts come from tracefs), kprobe variants would "
                    "read struct sock at wrong offsets"
                ),
            )
        )
    try:
        import bcc

        out.append(Check("bcc", True, f"bcc {getattr(bcc, '__version__', '?')} importable"))
    except ImportError:
        out.append(
            Check(
                "bcc",
                False,
                "python cannot import bcc",
                "apt install python3-bpfcc and use a venv made with "
                "--system-site-packages (sudo scripts/provision.sh)",
            )
        )
    is_root = os.geteuid() == 0
    out.append(
        Check(
            "privileges",
            is_root,
            "root" if is_root else f"uid {os.geteuid()}",
            "run as root (sudo): loading eBPF programs needs CAP_BPF and CAP_PERFMON",
        )
    )
    return out


def self_check(plan: AttachPlan) -> Check:
    """Attach tcp_state for real and see one loopback connection's events."""
    name = "self-check"
    if not plan.probes["tcp_state"].mode:
        return Check(name, False, "tcp_state cannot attach: nothing to load", "see above")
    srv = socket.socket()
    try:
        srv.bind(("127.0.0.1", 0))
        port = srv.getsockname()[1]
        seen: list[dict[str, object]] = []
        probes = ProbeSet(plan, ["tcp_state"], Filters(ports={port}))

        def add(probe: str, records: bytes) -> None:
            seen.extend(batch_events(make_body(probe, probes.layout(probe), records)))

        try:
            probes.start(add)
            srv.listen()
            cli = socket.create_connection(("127.0.0.1", port))
            conn, _ = srv.accept()
            deadline = time.monotonic() + SELF_CHECK_S
            while not any(e["new"] == "ESTABLISHED" for e in seen):
                if time.monotonic() > deadline:
                    return Check(
                        name,
                        False,
                        f"attached, but no event arrived in {SELF_CHECK_S:g}s",
                        "check dmesg and `bpftool prog list`",
                    )
                probes.poll(0.05)
            cli.close()
            conn.close()
        finally:
            probes.close()
    except ProbeError as e:
        return Check(name, False, str(e), "fix the items above")
    except Exception as e:  # bcc raises bare Exception on compile/load errors
        return Check(name, False, f"{type(e).__name__}: {e}", "fix the items above")
    finally:
        srv.close()
    mode = plan.probes["tcp_state"].mode
    return Check(
        name,
        True,
        f"loaded and attached tcp_state ({mode}, {plan.delivery}); "
        f"saw {len(seen)} events of one loopback connection, then detached",
    )
