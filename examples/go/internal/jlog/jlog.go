// Package jlog writes one JSON object per line to stderr, in the shape of
// log/slog's JSONHandler: {"time":..., "level":"INFO", "msg":..., key: value...}.
// log/slog arrived in Go 1.21 and Debian 12 ships Go 1.19, so the programs
// build with the distribution's compiler and still log what slog would.
package jlog

import (
	"encoding/json"
	"os"
	"sync"
	"time"
)

var mu sync.Mutex

func write(level, msg string, kv []any) {
	rec := map[string]any{
		"time":  time.Now().Format(time.RFC3339Nano),
		"level": level,
		"msg":   msg,
	}
	for i := 0; i+1 < len(kv); i += 2 {
		key, ok := kv[i].(string)
		if !ok {
			continue
		}
		if err, isErr := kv[i+1].(error); isErr {
			rec[key] = err.Error()
		} else {
			rec[key] = kv[i+1]
		}
	}
	line, err := json.Marshal(rec)
	if err != nil {
		line, _ = json.Marshal(map[string]any{"level": "ERROR", "msg": "unloggable record", "error": err.Error()})
	}
	mu.Lock()
	os.Stderr.Write(append(line, '\n'))
	mu.Unlock()
}

// Info logs msg with alternating keys and values.
func Info(msg string, kv ...any) { write("INFO", msg, kv) }

// Error logs msg at level ERROR.
func Error(msg string, kv ...any) { write("ERROR", msg, kv) }
