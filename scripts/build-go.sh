#!/usr/bin/env bash
# Builds the seed's Go programs (examples/go) into examples/go/bin with the
# distribution's Go (golang-go): standard library only, nothing downloaded.
# Called by scripts/provision.sh and `make go`; a second run changes nothing
# when no source is newer than the binaries.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=$repo/examples/go
bin=$src/bin
programs=(server client bomb multiplex)

command -v go >/dev/null || { echo "build-go: no go compiler: apt-get install golang-go (scripts/provision.sh does)" >&2; exit 1; }
current() {
    local p
    for p in "${programs[@]}"; do
        [ -x "$bin/$p" ] || return 1
    done
    [ -z "$(find "$src" -name '*.go' -newer "$bin/${programs[0]}" -o -name go.mod -newer "$bin/${programs[0]}")" ]
}
if current; then
    echo "build-go: examples/go/bin up to date"
    exit 0
fi
# The build cache and module path live under /var/cache (root's, shared by
# every checkout and CI); GOPROXY=off: a module download would be a bug.
export GOCACHE=/var/cache/tcplab/go-build GOPATH=/var/cache/tcplab/gopath GOPROXY=off GOFLAGS=-mod=readonly
mkdir -p "$GOCACHE" "$GOPATH" "$bin"
cd "$src"
go vet ./...
go build -o "$bin/" ./cmd/...
# A program rebuilt to the same bytes keeps its old mtime: touch them all so
# the freshness check above holds.
for p in "${programs[@]}"; do touch "$bin/$p"; done
echo "build-go: built ${programs[*]} into examples/go/bin"
