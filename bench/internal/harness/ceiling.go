package harness

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/skiplock/skiplock/internal/benchsql"
	"github.com/skiplock/skiplock/internal/pgtest"
)

// pgbenchResult is one pgbench run of the claim+complete script.
type pgbenchResult struct {
	rate float64 // batches completed per second
	left int     // rows the run did not drain
	done int     // rows it did
	cpu  cpuUse  // pgbench's CPU (as this process's children) and the server's
}

var tpsLine = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// pgbench runs the queue's claim+complete cycle (internal/benchsql's
// script) with clients clients until n batches of a prefilled skiplock
// table are done, and reports batches/s: script runs per second times the
// claim size, scaled by the share of rows actually drained.
func (e *env) pgbench(ctx context.Context, size, n, clients int) (pgbenchResult, error) {
	bin, err := pgbenchBinary()
	if err != nil {
		return pgbenchResult{}, err
	}
	dir, err := os.MkdirTemp("", "skiplock-bench-")
	if err != nil {
		return pgbenchResult{}, err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, "cycle.sql")
	if err := os.WriteFile(script, []byte(benchsql.Script(skiplockSchema)), 0o644); err != nil {
		return pgbenchResult{}, err
	}
	txPerClient := max(n/size/clients, 1)
	args := []string{"-n", "-M", "prepared", "-c", strconv.Itoa(clients), "-j", "2",
		"-t", strconv.Itoa(txPerClient), "-D", "size=" + strconv.Itoa(size), "-D", "queue=" + benchQueue,
		"-f", script, libpqConnString(e.url)}
	cmd := exec.CommandContext(ctx, bin, args...)
	c0 := e.cpuNow()
	out, err := cmd.CombinedOutput()
	cpu := e.cpuNow().sub(c0)
	if err != nil {
		return pgbenchResult{}, fmt.Errorf("pgbench: %w: %s", err, tail(string(out), 800))
	}
	m := tpsLine.FindSubmatch(out)
	if m == nil {
		return pgbenchResult{}, fmt.Errorf("pgbench printed no tps line: %s", tail(string(out), 800))
	}
	tps, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		return pgbenchResult{}, err
	}
	var left int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM `+qs("batch")).Scan(&left); err != nil {
		return pgbenchResult{}, err
	}
	total := txPerClient * clients * size
	done := min(total, n) - left
	if done <= 0 {
		return pgbenchResult{}, fmt.Errorf("pgbench drained nothing (%d rows left)", left)
	}
	// tps counts script runs; a run that found fewer rows still counts.
	return pgbenchResult{rate: tps * float64(size) * float64(done) / float64(total), left: left, done: done, cpu: cpu}, nil
}

// pgbenchBinary finds pgbench next to the server binaries, else on PATH.
func pgbenchBinary() (string, error) {
	if dir, err := pgtest.BinDir(); err == nil {
		p := filepath.Join(dir, "pgbench")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("pgbench")
	if err != nil {
		return "", fmt.Errorf("pgbench not found: install the PostgreSQL client package (or skip -scenarios ceiling)")
	}
	return p, nil
}

// libpqConnString removes pgx-only parameters (pool_*) from a URL so that
// pgbench (libpq) accepts it. Other forms are passed through.
func libpqConnString(s string) string {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return s
	}
	q := u.Query()
	for k := range q {
		if strings.HasPrefix(k, "pool_") {
			q.Del(k)
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
