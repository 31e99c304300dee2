// The peer the multiplexer is measured against: the seed's multiplexing demo
// written the Go way, one goroutine per connection.
//
//	go_client -target 127.0.0.1:8080 -connections 10000 -interval 1s -duration 5s
//
// Each goroutine dials, then sends "tick\n" every interval and reads the
// echo with a blocking Read: the runtime parks it and its netpoller (one
// epoll for the process) wakes it, as the seed describes. At the end it
// prints one JSON line: connections held, echoes, RSS before dialling and at
// the end (KB), and OS threads. Built at bench time by bench/c10k.py with
// Debian's golang-go. Loopback only: the target must be 127.0.0.0/8 or ::1.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Dials waiting for the handshake at once: the same bound as the Python
// multiplexer (actors/multiplexer.py IN_FLIGHT), so neither overflows the
// server's accept backlog and pays SYN retries.
const inFlight = 512

func rssKB() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize()) / 1024
}

func threads() int {
	entries, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return -1
	}
	return len(entries)
}

func main() {
	target := flag.String("target", "127.0.0.1:8080", "server HOST:PORT (loopback only)")
	n := flag.Int("connections", 10000, "connections to hold")
	interval := flag.Duration("interval", time.Second, "time between lines per connection")
	duration := flag.Duration("duration", 5*time.Second, "how long to hold them")
	flag.Parse()

	host, _, err := net.SplitHostPort(*target)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		fmt.Fprintf(os.Stderr, "go_client: error: target %q is not a loopback HOST:PORT\n", *target)
		os.Exit(2)
	}
	rssStart := rssKB()
	var held, failed, echoes int64
	stop := make(chan struct{})
	slots := make(chan struct{}, inFlight)
	for i := 0; i < *n; i++ {
		go func(i int) {
			slots <- struct{}{}
			conn, err := net.Dial("tcp", *target)
			<-slots
			if err != nil {
				atomic.AddInt64(&failed, 1)
				return
			}
			atomic.AddInt64(&held, 1)
			r := bufio.NewReader(conn)
			// Spread the lines over the interval, like the multiplexer does.
			time.Sleep(*interval * time.Duration(i) / time.Duration(*n))
			for {
				select {
				case <-stop:
					return // the process exits holding the connection
				default:
				}
				if _, err := conn.Write([]byte("tick\n")); err != nil {
					return
				}
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
				atomic.AddInt64(&echoes, 1)
				time.Sleep(*interval)
			}
		}(i)
	}
	time.Sleep(*duration)
	out := map[string]int64{
		"held":         atomic.LoadInt64(&held),
		"failed":       atomic.LoadInt64(&failed),
		"echoes":       atomic.LoadInt64(&echoes),
		"rss_start_kb": rssStart,
		"rss_kb":       rssKB(),
		"threads":      int64(threads()),
	}
	close(stop)
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
}
