// client: the seed's client. Opens -conns connections one after another,
// sends -lines lines on each, reads each echo, and closes.
//
//	client -target 127.0.0.1:8080 -conns 50 -lines 1
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"tcplab/examples/go/internal/jlog"
	"tcplab/examples/go/internal/labnet"
)

func main() {
	target := flag.String("target", "127.0.0.1:8080", "server address")
	conns := flag.Int("conns", 1, "connections, one after another")
	lines := flag.Int("lines", 1, "lines sent on each connection")
	flag.Parse()
	if err := labnet.CheckTarget(*target); err != nil {
		labnet.Fail("client", err)
	}
	failed := 0
	for i := 0; i < *conns; i++ {
		if err := once(*target, *lines); err != nil {
			jlog.Error("connect_failed", "error", err)
			failed++
		}
	}
	jlog.Info("done", "connections", *conns, "failed", failed)
	if failed > 0 {
		os.Exit(1)
	}
}

func once(target string, lines int) error {
	conn, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	fields := labnet.Fields(conn)
	jlog.Info("connect", fields...)
	r := bufio.NewReader(conn)
	for i := 0; i < lines; i++ {
		if _, err := fmt.Fprintf(conn, "hello %d\n", i); err != nil {
			return err
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := r.ReadString('\n'); err != nil {
			return err
		}
	}
	jlog.Info("close", fields...)
	return nil
}
