"""Every scenario end to end, as `make lab` runs them (`tcplab run all`):
real probes, real actors in a real lab namespace, and the kernel signature
each scenario promises, read from its summary."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import LiveRun, tcplab, wait_nothing_left
from pyroute2 import netns

from lab.scenario import available

# The first test sets up `tcplab run all` (~2.5 min here): above the default 300 s
# per test on a slower machine.
pytestmark = [
    pytest.mark.root,
    pytest.mark.bpf,
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.timeout(1200),
]

Runs = dict[str, tuple[Path, dict[str, Any]]]


@pytest.fixture(scope="module")
def all_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Runs]:
    """`tcplab run all` once for the module: its exit code and each run."""
    runs = tmp_path_factory.mktemp("runs")
    out = tcplab("run", "all", "--json", "--runs-dir", str(runs), timeout=1200)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    finals = {r["scenario"]: r for r in results if "exit_code" in r}
    assert sorted(finals) == sorted(s.name for s in available()), out.stderr
    codes = {n: r["exit_code"] for n, r in finals.items()}
    assert out.returncode == max(codes.values()), (out.returncode, codes, out.stderr)
    return out.returncode, {n: (Path(r["run_dir"]), r["summary"]) for n, r in finals.items()}


def run_scenario(name: str, all_runs: tuple[int, Runs]) -> tuple[Path, dict[str, Any]]:
    return all_runs[1][name]


def test_run_all_runs_every_scenario_with_its_report(all_runs: tuple[int, Runs]) -> None:
    """One run directory per scenario file, each with its report (the exit
    code, the worst of the runs, is checked by the fixture; whether each
    scenario holds, by that scenario's own test)."""
    _code, runs = all_runs
    assert len({run_dir for run_dir, _ in runs.values()}) == len(runs)
    assert all((run_dir / "report.html").exists() for run_dir, _ in runs.values())


def assert_clean_run(run_dir: Path, summary: dict[str, Any]) -> None:
    """Every expectation held, nothing lost, no actor crashed, nothing left behind."""
    meta = json.loads((run_dir / "run.json").read_text())
    failed = [e for e in summary["expectations"] if not e["held"]]
    assert failed == [], summary["diagnosis"]
    assert not any(a["crashed"] for a in meta["actors"].values()), meta["actors"]
    assert meta["bus"]["gaps"] == [] and meta["bus"]["rejected"] == {}
    assert all(s["complete"] for s in meta["bus"]["senders"].values()), meta["bus"]["senders"]
    assert summary["counts"]["lost"]["kernel_drops"] == 0
    assert meta["namespace"]["name"] not in netns.listnetns()
    for name in ("events.jsonl", "connections.jsonl", "summary.json", "report.html", "trace.json"):
        assert (run_dir / name).stat().st_size > 0, name


def test_echo_full_lifecycle_on_both_sides(all_runs: tuple[int, Runs]) -> None:
    """Every client connection is matched to its kernel transitions on both sides."""
    run_dir, summary = run_scenario("echo", all_runs)
    assert_clean_run(run_dir, summary)
    lifecycles = [json.loads(line) for line in open(run_dir / "connections.jsonl")]
    conns = [c for c in lifecycles if c["kind"] == "connection"]
    client = [c for c in conns if c["owner"]["actor"] == "client"]
    server = [c for c in conns if c["owner"]["actor"] == "server"]
    assert len(client) == 20 and len(server) == 20
    assert {(*(s["state"] for s in c["states"]), c["last_state"]) for c in client} == {
        ("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE")
    }
    assert {(*(s["state"] for s in c["states"]), c["last_state"]) for c in server} == {
        ("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE")
    }
    # Both ends of each connection: the client's local port is the server's peer port.
    assert sorted(c["lport"] for c in client) == sorted(c["rport"] for c in server)


def test_bomb_exhausts_ports_and_the_pool_does_not(all_runs: tuple[int, Runs]) -> None:
    """TIME_WAIT climbs to the port range, connect() fails with EADDRNOTAVAIL,
    and the pooled phase opens no connection and meets no such failure."""
    run_dir, summary = run_scenario("bomb", all_runs)
    assert_clean_run(run_dir, summary)
    counts = summary["counts"]
    assert counts["states_peak"]["TIME_WAIT"] >= 3000
    assert counts["errors"]["EADDRNOTAVAIL"] > 0
    assert counts["phases"]["pooled"].get("errors", {}).get("EADDRNOTAVAIL", 0) == 0


def test_leak_close_wait_owned_by_leaker_and_emfile(all_runs: tuple[int, Runs]) -> None:
    run_dir, summary = run_scenario("leak", all_runs)
    assert_clean_run(run_dir, summary)
    counts = summary["counts"]
    assert counts["outcomes"]["stuck_close_wait"] >= 50
    assert counts["accept"]["EMFILE"] > 0
    assert any("CLOSE_WAIT" in line and "leaker" in line for line in summary["diagnosis"])


def connections(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "connections.jsonl").read_text().splitlines()]


def test_go_leak_close_wait_owned_by_the_go_server(all_runs: tuple[int, Runs]) -> None:
    """The seed's Go server (a foreign program, started by its relay): every
    stuck CLOSE_WAIT socket is owned by its pid (accept4), joined to its own
    log lines (accept, peer_close, leaked); EMFILE from the kernel and its log."""
    run_dir, summary = run_scenario("go-leak", all_runs)
    assert_clean_run(run_dir, summary)
    go_pid = json.loads((run_dir / "run.json").read_text())["programs"]["server"]
    stuck = [c for c in connections(run_dir) if c["outcome"] == "stuck_close_wait"]
    assert len(stuck) >= 50
    # Learnt from accept4 or from the program's own record of that socket,
    # whichever the correlator met first: the same pid either way.
    assert {(c["owner"]["actor"], c["owner"]["pid"]) for c in stuck} == {("server", go_pid)}
    assert any(c["owner"]["via"] == "accept4" for c in stuck)
    assert sum(c["app"].get("leaked", 0) for c in stuck) >= 50
    counts = summary["counts"]
    assert counts["accept"]["EMFILE"] > 0 and counts["errors"]["EMFILE"] > 0
    assert any(
        f"CLOSE_WAIT, owned by server pid {go_pid}" in line for line in summary["diagnosis"]
    ), summary["diagnosis"]
    # The syscall barrier: every stuck socket's fd read EOF and was never closed.
    assert counts["barrier"]["close_wait_eof_never_closed"] == len(stuck)


def test_go_bomb_logs_eaddrnotavail_joined_to_the_kernel(all_runs: tuple[int, Runs]) -> None:
    """The Go bomb's "connect: cannot assign requested address" lines are
    named EADDRNOTAVAIL and stand beside the kernel's own count of connects
    that ended without a port."""
    run_dir, summary = run_scenario("go-bomb", all_runs)
    assert_clean_run(run_dir, summary)
    counts = summary["counts"]
    assert counts["states_peak"]["TIME_WAIT"] >= 3000
    assert counts["errors"]["EADDRNOTAVAIL"] > 0
    assert counts["kernel_errors"]["EADDRNOTAVAIL"] > 0
    failed = [
        json.loads(line)
        for line in (run_dir / "events.jsonl").read_text().splitlines()
        if '"connect_failed"' in line and '"src":"app"' in line
    ]
    assert failed and all(
        r["error"] == "EADDRNOTAVAIL"
        and r["actor"] == "bomb"
        and r["error_text"].endswith("connect: cannot assign requested address")
        for r in failed
    )


def test_go_netpoll_many_goroutines_few_threads(all_runs: tuple[int, Runs]) -> None:
    """2000 goroutines, each blocked in Read as the program sees it: the
    kernel sees a few Go threads in epoll_wait, the Python loop in one."""
    run_dir, summary = run_scenario("go-netpoll", all_runs)
    assert_clean_run(run_dir, summary)
    by_actor = summary["counts"]["epoll_by_actor"]
    assert by_actor["gomux"]["connections_held"] >= 1900
    assert 1 <= by_actor["gomux"]["threads"] <= 16
    assert by_actor["pymux"]["threads"] <= 3
    assert by_actor["gomux"]["max_ready"] > 1
    # EAGAIN before each park: Go's reads find nothing, Python's never do
    # (it reads only what epoll said is ready).
    io = summary["counts"]["barrier"]["by_actor"]
    assert io["gomux"]["fds"] >= 1900 and io["gomux"]["eagain_reads"] > 0
    assert io["pymux"]["eagain_reads"] == 0


def test_multiplex_holds_ten_thousand_on_epoll(all_runs: tuple[int, Runs]) -> None:
    run_dir, summary = run_scenario("multiplex", all_runs)
    assert_clean_run(run_dir, summary)
    assert summary["counts"]["states_peak"]["ESTABLISHED"] >= 19000
    assert summary["counts"]["epoll"]["max_ready"] > 1


def test_ctrl_c_mid_run_records_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """SIGINT during a phase: exit 130, the run directory is complete, and no
    process, namespace, BPF program or bus directory of the run remains."""
    run = LiveRun("bomb", "--runs-dir", str(tmp_path))
    run.wait_phase("bomb")
    programs = run.wait_programs()
    assert programs, "the probe process held no BPF program"
    run.proc.send_signal(signal.SIGINT)
    code, out, err = run.finish()
    assert code == 130, err
    (run_dir,) = tmp_path.iterdir()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["interrupted"] is True, out
    assert (run_dir / "recording.msgpack").stat().st_size > 0
    assert (run_dir / "report.html").exists(), err
    assert wait_nothing_left(run.proc.pid, set(run.pids.values()), programs) == []
