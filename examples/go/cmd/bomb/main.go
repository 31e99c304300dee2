// bomb: the seed's port bomb. Dials the target and closes at once, as fast
// as it can, so the kernel fills with TIME_WAIT sockets (the active closer
// keeps them) until connect fails with EADDRNOTAVAIL: "cannot assign
// requested address", no ephemeral port left for this destination.
//
//	bomb -target 127.0.0.1:8080 -duration 10s
//	bomb -target 127.0.0.1:8080 -count 4500   # 4500 dials, however long they take
package main

import (
	"errors"
	"flag"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"tcplab/examples/go/internal/jlog"
	"tcplab/examples/go/internal/labnet"
)

// Failures logged one by one; past this many only the counts in the progress
// records (a bomb fails thousands of times a second once the ports are gone).
const maxLoggedFailures = 200

const failPause = time.Millisecond

func main() {
	target := flag.String("target", "127.0.0.1:8080", "server address (loopback or 198.18.0.0/15)")
	duration := flag.Duration("duration", 10*time.Second, "how long to bomb")
	workers := flag.Int("workers", 4, "goroutines dialling at once")
	count := flag.Int64("count", 0, "stop after this many dials (0: only -duration ends the bomb)")
	flag.Parse()
	if *count < 0 {
		labnet.Fail("bomb", errors.New("-count must be 0 or more"))
	}
	if err := labnet.CheckTarget(*target); err != nil {
		labnet.Fail("bomb", err)
	}
	var ok, failed, dials atomic.Int64
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	var working sync.WaitGroup
	for w := 0; w < *workers; w++ {
		working.Add(1)
		go func() {
			defer working.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				if *count > 0 && dials.Add(1) > *count {
					return
				}
				conn, err := net.Dial("tcp", *target)
				if err != nil {
					if failed.Add(1) <= maxLoggedFailures {
						jlog.Error("connect_failed", "error", err)
					}
					// Out of ports, a failing dial returns at once: a short
					// pause keeps the bomb from spinning a core for nothing.
					time.Sleep(failPause)
					continue
				}
				conn.Close()
				ok.Add(1)
			}
		}()
	}
	// Closed when every worker has made its share of -count.
	counted := make(chan struct{})
	go func() { working.Wait(); close(counted) }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	end := time.After(*duration)
	start := time.Now()
	for {
		select {
		case <-tick.C:
			jlog.Info("progress", "connections", ok.Load(), "failed", failed.Load())
			continue
		case s := <-stop:
			jlog.Info("stopping", "signal", s.String())
		case <-end:
		case <-counted:
		}
		break
	}
	close(done)
	jlog.Info("done", "connections", ok.Load(), "failed", failed.Load(),
		"seconds", time.Since(start).Seconds())
}
