# The README's commands. Each works as the very first command on a fresh
# machine: it provisions when needed (scripts/provision.sh --if-needed).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin

ifneq ($(shell id -u),0)
$(error tcplab: run as root (sudo make $(or $(MAKECMDGOALS),lab)): the eBPF probes and the lab's network namespaces need root)
endif

.PHONY: lab test bench test-kernels test-kernels-images provision lint go

# make itself can only exit 0 or 2: the code of `tcplab run all` (the worst
# of its runs, README "Exit codes") is printed when it is not 0.
lab: provision
	@$(BIN)/tcplab run all || { code=$$?; echo "tcplab run all: exit code $$code (README: Exit codes)"; exit $$code; }

test: provision
	$(BIN)/pytest -ra

bench: provision
	$(BIN)/python -m bench

provision:
	@bash scripts/provision.sh --if-needed

# The seed's Go programs (examples/go/bin); provision builds them too.
go:
	bash scripts/build-go.sh

lint: provision
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy actors bus correlator lab probes reports orchestrator.py

# The probe tests on other kernels, each in a qemu VM that the project builds,
# caches in /var/cache/tcplab and boots itself: docs/kernels.md. KERNELS names
# scripts/kernels/<name>.conf files. Their images are built first, side by side
# (test-kernels-images: network and disk more than CPU, so CI starts it beside
# `make test`); then one VM per kernel, one after another (all of them, even
# after a failure). The default is Debian 12's 6.1 (kprobes on), what CI runs.
# Default: Debian 12's 6.1 then Debian 11's 5.10; one: make test-kernels KERNEL=debian12
# (docs/kernels.md). KERNEL=name: one.
KERNELS ?= $(or $(KERNEL),debian12 debian11)
test-kernels-images:
	@pids=(); for k in $(KERNELS); do \
	    { bash scripts/test-kernels.sh --kernel "$$k" --build-only 2>&1 | sed -u "s/^/[$$k] /"; exit $${PIPESTATUS[0]}; } & pids+=($$!); \
	done; status=0; for p in "$${pids[@]}"; do wait "$$p" || status=$$?; done; exit $$status
test-kernels: test-kernels-images
	@status=0; for k in $(KERNELS); do bash scripts/test-kernels.sh --kernel "$$k" || status=$$?; done; exit $$status
