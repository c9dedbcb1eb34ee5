package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/internal/pgtest"
)

// The worker binary, built once per test run (buildWorker) into binDir.
var (
	binDir    string
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// buildWorker builds the worker binary once (with the race detector when
// the tests have it) and returns its path.
func buildWorker(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		bin := filepath.Join(binDir, "worker")
		args := []string{"build", "-o", bin}
		if raceEnabled {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, ".")...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
			return
		}
		binPath = bin
	})
	require.NoError(t, buildErr)
	return binPath
}

// proc is one worker process started by a test.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd

	mu    sync.Mutex
	lines []string // its output (stdout and stderr), line by line

	addr     chan string   // its HTTP address, once it logged it
	done     chan struct{} // closed once it exited and its output was read
	exitCode int
}

// startWorker starts the worker binary with env added to a clean
// environment (no DATABASE_URL or SKIPLOCK_* of the caller's) and args. It
// is killed at the end of the test if still running.
func startWorker(t *testing.T, name string, env map[string]string, args ...string) *proc {
	t.Helper()
	bin := buildWorker(t)
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "DATABASE_URL=") || strings.HasPrefix(kv, "SKIPLOCK_") {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	r, w, err := os.Pipe()
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = w, w
	require.NoError(t, cmd.Start())
	_ = w.Close()
	p := &proc{t: t, name: name, cmd: cmd, addr: make(chan string, 1), done: make(chan struct{})}
	go p.read(r)
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("output of %s:\n%s", name, p.output())
		}
	})
	return p
}

// read collects the process's output, spots its HTTP address, and waits
// for the process once the output ends.
func (p *proc) read(r io.ReadCloser) {
	defer close(p.done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		p.mu.Lock()
		p.lines = append(p.lines, line)
		p.mu.Unlock()
		if e := parseLog(line); e != nil && e["msg"] == "HTTP listening" {
			if a, ok := e["addr"].(string); ok {
				p.addr <- a
			}
		}
	}
	_ = r.Close()
	err := p.cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
		p.exitCode = 0
	case errors.As(err, &ee):
		p.exitCode = ee.ExitCode() // -1 if killed by a signal
	default:
		p.exitCode = -2
	}
}

func parseLog(line string) map[string]any {
	var e map[string]any
	if json.Unmarshal([]byte(line), &e) != nil {
		return nil
	}
	return e
}

// output returns everything the process printed so far.
func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// logs returns the process's JSON log entries whose msg is msg.
func (p *proc) logs(msg string) []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []map[string]any
	for _, l := range p.lines {
		if e := parseLog(l); e != nil && e["msg"] == msg {
			out = append(out, e)
		}
	}
	return out
}

// baseURL waits for the process to log its HTTP address.
func (p *proc) baseURL() string {
	p.t.Helper()
	select {
	case a := <-p.addr:
		p.addr <- a // for the next caller
		return "http://" + a
	case <-p.done:
		p.t.Fatalf("%s exited (status %d) before serving HTTP:\n%s", p.name, p.exitCode, p.output())
	case <-time.After(2 * time.Minute):
		p.t.Fatalf("%s did not serve HTTP within 2 minutes:\n%s", p.name, p.output())
	}
	return ""
}

// signal sends sig to the process.
func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	require.NoError(p.t, p.cmd.Process.Signal(sig))
}

// wait waits up to d for the process to exit and returns its exit status.
func (p *proc) wait(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.exitCode
	case <-time.After(d):
		p.t.Fatalf("%s did not exit within %s:\n%s", p.name, d, p.output())
		return 0
	}
}

// runWorker runs the worker binary to its end (at most a minute) and
// returns its exit status and output.
func runWorker(t *testing.T, env map[string]string, args ...string) (int, string) {
	t.Helper()
	p := startWorker(t, "worker", env, args...)
	code := p.wait(time.Minute)
	return code, p.output()
}

// httpClient keeps no idle connections, so no goroutine outlives a test.
var httpClient = &http.Client{
	Timeout:   5 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// get returns the status and body of url, or 0 and the error text.
func get(url string) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error()
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// waitStatus polls url until it answers status, for at most d, and
// returns the body.
func waitStatus(t *testing.T, url string, status int, d time.Duration) string {
	t.Helper()
	var got int
	var body string
	pgtest.WaitFor(t, d, fmt.Sprintf("%s to answer %d", url, status), func() bool {
		got, body = get(url)
		return got == status
	})
	return body
}
