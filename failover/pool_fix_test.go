package failover_test

import (
	"context"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/pgtest"
)

// retireByReadOnlyError makes p see a 25006 on one of its connections,
// which retires the serving generation (the server itself stays writable).
func retireByReadOnlyError(t *testing.T, ctx context.Context, p *failover.Pool) {
	t.Helper()
	changed := p.WriterChanged()
	tx, err := p.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "CREATE TABLE retire_me (v int)")
	require.Equal(t, failover.ClassReadOnly, failover.Classify(err), "%v", err)
	require.NoError(t, tx.Rollback(ctx))
	select {
	case <-changed:
	default:
		t.Fatal("a read-only error must retire the generation at once")
	}
}

func TestPoolZeroPoolConfig(t *testing.T) {
	_, err := failover.New(context.Background(), &failover.Config{PoolConfig: &pgxpool.Config{}})
	require.ErrorIs(t, err, failover.ErrInvalidConfig)
	require.Contains(t, err.Error(), "PoolConfig.ConnConfig")
}

// TestPoolCloseWakesWaiters: a caller waiting for a writer while the pool
// rebuilds gets ErrClosed as soon as the pool closes, not after WriterWait.
func TestPoolCloseWakesWaiters(t *testing.T) {
	c := newCluster(t)
	ctx := ctxFor(t, 2*time.Minute)
	p := c.newPool(func(cfg *failover.Config) { cfg.WriterWait = time.Minute })
	require.NoError(t, p.Ping(ctx))
	c.proxy.SetTarget("127.0.0.1:1") // nothing listens there
	retireByReadOnlyError(t, ctx, p)

	done := make(chan error, 1)
	go func() {
		_, err := p.Exec(ctx, "SELECT 1")
		done <- err
	}()
	// Let the rebuild fail a couple of times while the caller waits.
	n := len(c.eventsOf(failover.EventProbeFailed))
	pgtest.WaitFor(t, 20*time.Second, "failed rebuild probes", func() bool {
		return len(c.eventsOf(failover.EventProbeFailed)) >= n+2
	})
	select {
	case err := <-done:
		t.Fatalf("Exec returned before Close: %v", err)
	default:
	}
	closed := time.Now()
	p.Close()
	select {
	case err := <-done:
		require.ErrorIs(t, err, failover.ErrClosed)
		t.Logf("waiter returned %s after Close began", time.Since(closed).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatal("a caller waiting for a writer was not woken by Close")
	}
}

// TestPoolCommitOnRetiredGeneration: a transaction begun before its
// generation was retired must not commit on it.
func TestPoolCommitOnRetiredGeneration(t *testing.T) {
	c := newCluster(t)
	ctx := ctxFor(t, 2*time.Minute)
	p := c.newPool(nil)
	_, err := p.Exec(ctx, "CREATE TABLE committed (v int)")
	require.NoError(t, err)

	tx, err := p.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.Background()) }() // lets Close finish if the test fails
	_, err = tx.Exec(ctx, "INSERT INTO committed VALUES (1)")
	require.NoError(t, err)
	retireByReadOnlyError(t, ctx, p) // on another connection
	err = tx.Commit(ctx)
	var sw *failover.StaleWriterError
	require.ErrorAs(t, err, &sw, "commit on a retired generation must fail")
	require.True(t, failover.Classify(err).Retryable(), "nothing was committed")

	var n int
	require.NoError(t, c.direct(0).QueryRow(ctx, "SELECT count(*) FROM committed").Scan(&n))
	require.Zero(t, n, "the row of a transaction on a retired generation must not be committed")

	// The pool serves again on a new generation, and commits there work.
	tx2, err := p.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx2.Rollback(context.Background()) }()
	_, err = tx2.Exec(ctx, "INSERT INTO committed VALUES (2)")
	require.NoError(t, err)
	require.NoError(t, tx2.Commit(ctx))
	require.NoError(t, c.direct(0).QueryRow(ctx, "SELECT count(*) FROM committed").Scan(&n))
	require.Equal(t, 1, n)
}

// TestPoolContextErrorsDoNotKickProbes: operations failing with their own
// expired or cancelled context open no probe connections.
func TestPoolContextErrorsDoNotKickProbes(t *testing.T) {
	c := newCluster(t)
	ctx := ctxFor(t, 2*time.Minute)
	p := c.newPool(func(cfg *failover.Config) { cfg.ProbeInterval = time.Minute })
	require.NoError(t, p.Ping(ctx))
	before := c.proxy.Accepted()
	tick := time.NewTicker(5 * time.Millisecond) // spread over about a second
	defer tick.Stop()
	for i := 0; i < 200; i++ {
		<-tick.C
		octx, cancel := context.WithTimeout(ctx, 0)
		if i%2 == 1 {
			octx, cancel = context.WithCancel(ctx)
			cancel()
		}
		_, err := p.Exec(octx, "SELECT 1")
		cancel()
		require.Error(t, err)
	}
	require.NoError(t, p.Ping(ctx))
	attempts := c.proxy.Accepted() - before
	t.Logf("200 operations with ended contexts made %d connection attempts", attempts)
	require.LessOrEqual(t, attempts, int64(3))
}

// TestPoolKicksAreRateLimited: a burst of operations that each lose their
// connection (57P01) kicks at most a probe per ProbeInterval/4.
func TestPoolKicksAreRateLimited(t *testing.T) {
	c := newCluster(t)
	ctx := ctxFor(t, 2*time.Minute)
	var before, after atomic.Int64 // probes run BeforeConnect only
	p := c.newPool(func(cfg *failover.Config) {
		cfg.ProbeInterval = time.Minute
		cfg.PoolConfig.BeforeConnect = func(context.Context, *pgx.ConnConfig) error {
			before.Add(1)
			return nil
		}
		cfg.PoolConfig.AfterConnect = func(context.Context, *pgx.Conn) error {
			after.Add(1)
			return nil
		}
	})
	require.NoError(t, p.Ping(ctx))
	probes := func() int64 { return before.Load() - after.Load() }
	start := probes()
	for i := 0; i < 50; i++ {
		_, err := p.Exec(ctx, "SELECT pg_terminate_backend(pg_backend_pid())")
		require.Equal(t, failover.ClassShutdown, failover.Classify(err), "%v", err)
	}
	require.NoError(t, p.Ping(ctx))
	n := probes() - start
	t.Logf("50 lost connections kicked %d probes", n)
	require.Positive(t, n, "a lost connection must kick a probe")
	require.LessOrEqual(t, n, int64(3), "kicked probes must be rate-limited")
}

// TestPoolRebuildProbesOften: while rebuilding for seconds, the pool still
// probes about every RebuildBackoffDefault (100ms), so a writer that
// appears is used promptly; and the first probe follows the retire at once.
func TestPoolRebuildProbesOften(t *testing.T) {
	c := newCluster(t)
	ctx := ctxFor(t, 2*time.Minute)
	p := c.newPool(func(cfg *failover.Config) { cfg.RebuildBackoff = 0 })
	require.NoError(t, p.Ping(ctx))
	c.proxy.SetTarget(c.addr(1)) // the standby
	retireByReadOnlyError(t, ctx, p)
	stale := c.eventsOf(failover.EventStaleWriter)
	require.Len(t, stale, 1)
	rebuildProbes := func() []time.Time {
		var out []time.Time
		for _, e := range c.eventsOf(failover.EventNoWriter) {
			if !e.At.Before(stale[0].At) {
				out = append(out, e.At)
			}
		}
		return out
	}
	pgtest.WaitFor(t, 30*time.Second, "two seconds' worth of rebuild probes", func() bool {
		at := rebuildProbes()
		return len(at) >= 20 && at[len(at)-1].Sub(at[0]) > 2*time.Second
	})
	at := rebuildProbes()
	first := at[0].Sub(stale[0].At)
	t.Logf("first rebuild probe %s after the retire", first.Round(time.Millisecond))
	require.Less(t, first, time.Second, "the first probe after a retire must not wait")
	// Past the backoff ramp, gaps stay near 100ms (the median resists a
	// slow probe or two on a busy machine).
	var gaps []time.Duration
	for i := 6; i < len(at); i++ {
		gaps = append(gaps, at[i].Sub(at[i-1]))
	}
	sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
	median := gaps[len(gaps)/2]
	t.Logf("median gap between rebuild probes %s (max %s)", median.Round(time.Millisecond), gaps[len(gaps)-1].Round(time.Millisecond))
	require.Less(t, median, 250*time.Millisecond)

	require.NoError(t, c.nodes[1].Promote(ctx))
	promoted := time.Now()
	pgtest.WaitFor(t, 10*time.Second, "a generation on the promoted writer", func() bool {
		w, ok := p.Writer()
		return ok && w.Equal(c.identity(1))
	})
	ready := c.eventsOf(failover.EventGenerationReady)
	took := ready[len(ready)-1].At.Sub(promoted)
	t.Logf("writer used %s after Promote returned", took.Round(time.Millisecond))
	require.Less(t, took, time.Second)
}
