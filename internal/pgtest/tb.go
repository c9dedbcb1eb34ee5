package pgtest

import (
	"context"
	"time"
)

// helperTimeout bounds how long a test helper waits for servers to start.
const helperTimeout = 2 * time.Minute

// TB is the part of testing.TB the test helpers use. *testing.T and *testing.B implement it; it
// is an interface so that this package does not import package testing.
type TB interface {
	Helper()
	Cleanup(func())
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Name() string
}

// withTestLog returns opts with Logf defaulting to t.Logf.
func withTestLog(t TB, opts *Options) *Options {
	o := opts.withDefaults()
	if o.Logf == nil {
		o.Logf = t.Logf
	}
	return &o
}

// NewPrimary starts a primary server (see StartPrimary) that is closed when the test ends, and
// fails the test if it cannot. Options.Logf defaults to t.Logf.
func NewPrimary(t TB, opts *Options) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), helperTimeout)
	defer cancel()
	s, err := StartPrimary(ctx, withTestLog(t, opts))
	if err != nil {
		t.Fatalf("%v", err)
		return nil
	}
	t.Cleanup(func() { closeInCleanup(t, s) })
	return s
}

// NewPair starts a primary and a streaming replica of it (see StartReplica), both with opts,
// that are closed when the test ends (replica first), and fails the test if it cannot.
func NewPair(t TB, opts *Options) (primary, replica *Server) {
	t.Helper()
	primary = NewPrimary(t, opts)
	if primary == nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), helperTimeout)
	defer cancel()
	replica, err := primary.StartReplica(ctx, withTestLog(t, opts))
	if err != nil {
		t.Fatalf("%v", err)
		return primary, nil
	}
	t.Cleanup(func() { closeInCleanup(t, replica) })
	return primary, replica
}

// NewTestProxy starts a proxy to target (see NewProxy) that is closed when the test ends, and
// fails the test if it cannot.
func NewTestProxy(t TB, target string) *Proxy {
	t.Helper()
	p, err := NewProxy(target)
	if err != nil {
		t.Fatalf("%v", err)
		return nil
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Logf("%v", err)
		}
	})
	return p
}

func closeInCleanup(t TB, s *Server) {
	if err := s.Close(); err != nil {
		t.Logf("%v", err)
	}
}

// WaitFor checks cond every 10ms until it holds, and fails the test if it
// does not within d. It is for waiting on a condition, never for pacing.
func WaitFor(t TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s", d, what)
			return
		case <-tick.C:
		}
	}
}
