// server: the seed's echo server. Each connection gets a goroutine that
// answers every line with "ECHO: line" and closes the socket at EOF.
//
// With LEAK=true it has the seed's bug: it reads until EOF and never calls
// Close(), so each socket stays in CLOSE_WAIT holding a file descriptor
// until accept4 fails with EMFILE ("too many open files").
//
//	LEAK=true server -addr 127.0.0.1:8080 -nofile 128
package main

import (
	"bufio"
	"errors"
	"flag"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"tcplab/examples/go/internal/jlog"
	"tcplab/examples/go/internal/labnet"
)

// Accept errors such as EMFILE do not go away at once: wait before the next
// try, doubling up to a second (as net/http's server does).
const (
	firstBackoff = 5 * time.Millisecond
	maxBackoff   = time.Second
)

func main() {
	addr := flag.String("addr", ":8080", "listen address")
	nofile := flag.Uint64("nofile", 0, "soft open-file limit (0: keep)")
	flag.Parse()
	leak := os.Getenv("LEAK") == "true"
	if *nofile > 0 {
		if err := labnet.SetNofile(*nofile); err != nil {
			labnet.Fail("server", err)
		}
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		labnet.Fail("server", err)
	}
	jlog.Info("listening", "addr", ln.Addr().String(), "leak", leak, "pid", os.Getpid())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-stop
		jlog.Info("stopping", "signal", s.String())
		ln.Close()
	}()
	backoff := firstBackoff
	for {
		conn, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			jlog.Info("stopped")
			return
		}
		if err != nil {
			jlog.Error("accept failed", "error", err, "retry_in_ms", backoff.Milliseconds())
			time.Sleep(backoff)
			if backoff *= 2; backoff > maxBackoff {
				backoff = maxBackoff
			}
			continue
		}
		backoff = firstBackoff
		jlog.Info("accept", labnet.Fields(conn)...)
		go serve(conn, leak)
	}
}

func serve(conn net.Conn, leak bool) {
	fields := labnet.Fields(conn)
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if len(line) > 0 {
			if _, werr := conn.Write([]byte("ECHO: " + line)); werr != nil {
				jlog.Error("send failed", append(fields, "error", werr)...)
				break
			}
		}
		if err != nil {
			jlog.Info("peer_close", fields...)
			break
		}
	}
	if leak {
		// The bug: no conn.Close(). The socket stays in CLOSE_WAIT.
		jlog.Info("leaked", fields...)
		return
	}
	conn.Close()
	jlog.Info("close", fields...)
}
