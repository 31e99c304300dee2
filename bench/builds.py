"""The compiled peers: bench/connect_loop.c (gcc) and bench/go_client (go,
installed from Debian when missing), built into bench/build/."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench.common import BUILD, HERE, BenchError, log


def build_c() -> Path:
    """bench/connect_loop.c, compiled now: the minimal C peer and load generator."""
    if shutil.which("gcc") is None:
        raise BenchError("gcc is missing: run scripts/provision.sh (build-essential)")
    BUILD.mkdir(exist_ok=True)
    exe = BUILD / "connect_loop"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "connect_loop.c")], check=True)
    return exe


def ensure_go() -> str:
    """The go tool; Debian's golang-go is installed with apt-get when missing."""
    go = shutil.which("go")
    if go:
        return go
    log("go is missing: apt-get install golang-go")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "golang-go"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    go = shutil.which("go")
    if go is None:
        raise BenchError("golang-go installed but `go` is not on PATH")
    return go


def build_go() -> Path:
    """bench/go_client, the goroutine-per-connection peer of the multiplexer."""
    go = ensure_go()
    BUILD.mkdir(exist_ok=True)
    exe = BUILD / "go_client"
    subprocess.run(
        [go, "build", "-o", str(exe), "."], cwd=HERE / "go_client", check=True, capture_output=True
    )
    return exe
