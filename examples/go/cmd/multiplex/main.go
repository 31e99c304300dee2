// multiplex: the seed's netpoll demo. One goroutine per connection, each
// sending a line every -interval and reading its echo; the Go runtime parks
// every goroutine whose read would block (EAGAIN) and one thread waits in
// epoll_wait for all of them: thousands of connections, a handful of threads.
//
//	multiplex -target 127.0.0.1:8080 -conns 2000 -interval 1s
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"tcplab/examples/go/internal/jlog"
	"tcplab/examples/go/internal/labnet"
)

func main() {
	target := flag.String("target", "127.0.0.1:8080", "server address (loopback or 198.18.0.0/15)")
	conns := flag.Int("conns", 1000, "connections, one goroutine each")
	interval := flag.Duration("interval", time.Second, "time between a connection's lines")
	flag.Parse()
	if err := labnet.CheckTarget(*target); err != nil {
		labnet.Fail("multiplex", err)
	}
	var open, echoes, failed atomic.Int64
	quit := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < *conns; i++ {
		conn, err := net.Dial("tcp", *target)
		if err != nil {
			failed.Add(1)
			jlog.Error("connect_failed", "error", err)
			continue
		}
		open.Add(1)
		// One record per connection: its fd and 4-tuple name the owner.
		jlog.Info("connect", labnet.Fields(conn)...)
		wg.Add(1)
		go func(n int, c net.Conn) {
			defer wg.Done()
			defer c.Close()
			r := bufio.NewReader(c)
			t := time.NewTicker(*interval)
			defer t.Stop()
			for {
				if _, err := fmt.Fprintf(c, "line from %d\n", n); err != nil {
					return
				}
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
				echoes.Add(1)
				select {
				case <-quit:
					return
				case <-t.C:
				}
			}
		}(i, conn)
	}
	jlog.Info("pool_ready", "connections", open.Load(), "failed", failed.Load(),
		"goroutines", runtime.NumGoroutine(), "threads", threads())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			jlog.Info("progress", "connections", open.Load(), "echoes", echoes.Load(),
				"goroutines", runtime.NumGoroutine(), "threads", threads())
			continue
		case s := <-stop:
			jlog.Info("stopping", "signal", s.String())
		}
		break
	}
	close(quit)
	wg.Wait()
	jlog.Info("done", "connections", open.Load(), "echoes", echoes.Load())
}

// threads is the process's OS thread count, from /proc/self/status.
func threads() int {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "Threads:") {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "Threads:")))
			return n
		}
	}
	return -1
}
