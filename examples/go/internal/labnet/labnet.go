// Package labnet holds what the lab's Go programs share about sockets: the
// targets they may load, and a connection's fd and 4-tuple for their logs.
package labnet

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// The lab's own link addresses (RFC 2544's benchmarking block), used only
// inside the lab's network namespaces.
var labBlock = mustCIDR("198.18.0.0/15")

func mustCIDR(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

// CheckTarget refuses a load target outside loopback and the lab's block:
// a port bomb aimed anywhere else is an attack.
func CheckTarget(target string) error {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return fmt.Errorf("target %q is not HOST:PORT: give 127.0.0.1:8080", target)
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return fmt.Errorf("target %q: give an IP address (127.0.0.1, ::1 or 198.18.x.y), not a name", target)
	}
	if !ip.IsLoopback() && !labBlock.Contains(ip) {
		return fmt.Errorf("refusing target %s: load goes only to loopback or the lab's 198.18.0.0/15", target)
	}
	return nil
}

// Fields are a connection's fd and local view (laddr, lport, raddr, rport),
// the keys tcplab joins application records on.
func Fields(c net.Conn) []any {
	l, r := split(c.LocalAddr()), split(c.RemoteAddr())
	return []any{"fd", FD(c), "laddr", l.ip, "lport", l.port, "raddr", r.ip, "rport", r.port}
}

// FD is the connection's file descriptor number, or -1.
func FD(c net.Conn) int {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	raw.Control(func(f uintptr) { fd = int(f) })
	return fd
}

type hostPort struct {
	ip   string
	port int
}

func split(a net.Addr) hostPort {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return hostPort{a.String(), 0}
	}
	p, _ := strconv.Atoi(port)
	// An IPv4 peer of a dual-stack listener shows as ::ffff:a.b.c.d in the
	// kernel's view too; Go prints it as a.b.c.d. Keep the kernel's text.
	if ip := net.ParseIP(host); ip != nil {
		host = ip.String()
	}
	return hostPort{strings.TrimPrefix(host, "::ffff:"), p}
}

// SetNofile lowers the soft open-file limit (Go raises it to the hard limit
// at start), so that a leak meets EMFILE soon.
func SetNofile(n uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if n > lim.Max {
		return fmt.Errorf("nofile %d is above the hard limit %d", n, lim.Max)
	}
	lim.Cur = n
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// Fail prints one line and exits 2: a bad command line.
func Fail(prog string, err error) {
	fmt.Fprintf(os.Stderr, "%s: error: %v\n", prog, err)
	os.Exit(2)
}
