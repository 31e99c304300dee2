# The README's commands. Each works as the very first command on a fresh
# machine: it provisions when needed (scripts/provision.sh --if-needed).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin

ifneq ($(shell id -u),0)
$(error tcplab: run as root (sudo make $(or $(MAKECMDGOALS),lab)): the eBPF probes and the lab's network namespaces need root)
endif

.PHONY: lab test bench test-kernels provision lint go

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
	$(BIN)/ruff check . && $(BIN)/mypy actors bus correlator lab probes reports orchestrator.py

# The probe tests on a second kernel (Debian 12's 6.1, which has kprobes) in a
# qemu VM that the project builds, caches in /var/cache/tcplab and boots
# itself: docs/kernels.md. KERNEL picks scripts/kernels/$(KERNEL).conf.
KERNEL ?= debian12
test-kernels:
	bash scripts/test-kernels.sh --kernel $(KERNEL)
