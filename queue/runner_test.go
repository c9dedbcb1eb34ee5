package queue_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/queue"
)

func startRunner(t testing.TB, c *queue.Client, cfg queue.RunnerConfig) *queue.Runner {
	t.Helper()
	r, err := queue.NewRunner(c, &cfg)
	require.NoError(t, err)
	require.NoError(t, r.Start(testContext(t)))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = r.StopAndCancel(ctx)
	})
	return r
}

// executions records every handler call: batch id -> lease tokens seen.
type executions struct {
	mu     sync.Mutex
	tokens map[int64][]int64
}

func (x *executions) record(b *batch.Batch) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.tokens == nil {
		x.tokens = map[int64][]int64{}
	}
	x.tokens[b.ID] = append(x.tokens[b.ID], b.Lease.Token)
}

func (x *executions) snapshot() map[int64][]int64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make(map[int64][]int64, len(x.tokens))
	for k, v := range x.tokens {
		out[k] = append([]int64(nil), v...)
	}
	return out
}

// doneTokens returns the completion records: batch id -> tokens.
func (e *env) doneTokens() map[int64][]int64 {
	e.t.Helper()
	rows, err := e.pool.Query(context.Background(), "SELECT id, lease_token FROM "+e.q("batch_done"))
	require.NoError(e.t, err)
	defer rows.Close()
	out := map[int64][]int64{}
	for rows.Next() {
		var id, tok int64
		require.NoError(e.t, rows.Scan(&id, &tok))
		out[id] = append(out[id], tok)
	}
	require.NoError(e.t, rows.Err())
	return out
}

// TestRunnersDrainExactlyOnce: 16 concurrent workers drain 20,000 batches;
// each is completed exactly once, by the token of the claim that ran it,
// and none is left.
func TestRunnersDrainExactlyOnce(t *testing.T) {
	t.Parallel()
	const total, workers = 20000, 16
	e := newEnv(t, nil)
	ids := enqueueN(t, e.client, "drain", total)

	var x executions
	var handled atomic.Int64
	allDone := make(chan struct{})
	runners := make([]*queue.Runner, workers)
	for i := range runners {
		runners[i] = startRunner(t, e.client, queue.RunnerConfig{
			Queue:       "drain",
			Concurrency: 4,
			ClaimSize:   10,
			Owner:       "worker-" + strconv.Itoa(i),
			Handler: func(ctx context.Context, b *batch.Batch) error {
				x.record(b)
				if handled.Add(1) == total {
					close(allDone)
				}
				return nil
			},
		})
	}
	select {
	case <-allDone:
	case <-time.After(3 * time.Minute):
		t.Fatalf("only %d of %d batches handled", handled.Load(), total)
	}
	var completed int64
	for _, r := range runners {
		require.NoError(t, r.Stop(testContext(t)))
		st := r.Stats()
		completed += st.Completed
		require.Zero(t, st.LeaseLost)
		require.Zero(t, st.RoundTripErrors)
	}
	require.EqualValues(t, total, completed)
	require.Zero(t, e.count("WHERE queue = 'drain'"), "nothing may be left")

	seen := x.snapshot()
	done := e.doneTokens()
	require.Len(t, seen, total)
	require.Len(t, done, total)
	for _, id := range ids {
		require.Len(t, seen[id], 1, "batch %d handled %d times", id, len(seen[id]))
		require.Equal(t, seen[id], done[id], "batch %d must be completed once, by the token that ran it", id)
	}
}

// proxied returns a pool that reaches the shared server through a test
// proxy, so a test can cut it off.
func proxied(t *testing.T, url string) (*pgxpool.Pool, *pgtest.Proxy) {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	proxy := pgtest.NewTestProxy(t, net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))))
	cfg.ConnConfig.Host = proxy.Host()
	cfg.ConnConfig.Port = uint16(proxy.Port())
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool, proxy
}

// TestRunnerSelfFencesWhenCutOff: a worker whose database connection is cut
// off cannot renew its lease; its handler's context is cancelled while the
// lease is still valid in the database; another worker then finishes the
// batch, and the first worker's late acknowledgement is refused.
func TestRunnerSelfFencesWhenCutOff(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	poolA, proxy := proxied(t, e.url)
	clientA := newClient(t, poolA, e.schema, nil)

	type fenced struct {
		cause      error
		leaseValid bool
		token      int64
		leftMs     int64
	}
	started := make(chan *batch.Batch, 1)
	cancelled := make(chan fenced, 1)
	lease := 3 * time.Second
	runnerA := startRunner(t, clientA, queue.RunnerConfig{
		Queue:             "fence",
		Concurrency:       1,
		LeaseDuration:     lease,
		HeartbeatInterval: 300 * time.Millisecond,
		FenceMargin:       time.Second,
		PollInterval:      50 * time.Millisecond,
		Owner:             "cut-off",
		Handler: func(ctx context.Context, b *batch.Batch) error {
			started <- b
			<-ctx.Done()
			// The moment of cancellation, seen by the database directly.
			var f fenced
			f.cause = context.Cause(ctx)
			err := e.pool.QueryRow(context.Background(),
				"SELECT lease_expires_at > now(), lease_token, (extract(epoch FROM lease_expires_at - now()) * 1000)::int8 FROM "+e.q("batch")+" WHERE id = $1",
				b.ID).Scan(&f.leaseValid, &f.token, &f.leftMs)
			if err != nil {
				f.cause = err
			}
			cancelled <- f
			return ctx.Err()
		},
	})
	ids := enqueueN(t, e.client, "fence", 1)
	var b *batch.Batch
	select {
	case b = <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("handler did not start")
	}
	require.Equal(t, ids[0], b.ID)

	// Let a few heartbeats succeed, then cut the worker off.
	waitFor(t, 5*time.Second, "a lease renewal", func() bool {
		var expires time.Time
		require.NoError(t, e.pool.QueryRow(ctx, "SELECT lease_expires_at FROM "+e.q("batch")+" WHERE id = $1", b.ID).Scan(&expires))
		return expires.After(b.Lease.ExpiresAt)
	})
	proxy.Blackhole(true)
	cutAt := time.Now()

	var f fenced
	select {
	case f = <-cancelled:
	case <-time.After(2 * lease):
		t.Fatal("handler was not cancelled although its lease could not be renewed")
	}
	require.ErrorIs(t, f.cause, queue.ErrLeaseNotRenewed)
	require.True(t, f.leaseValid, "the handler must be cancelled before its lease expires (%d ms left)", f.leftMs)
	require.Equal(t, b.Lease.Token, f.token, "nobody else holds the batch yet")
	require.Less(t, time.Since(cutAt), lease+time.Second)

	// Another worker, with a working connection, takes over after expiry.
	var x executions
	runnerB := startRunner(t, e.client, queue.RunnerConfig{
		Queue:           "fence",
		Concurrency:     1,
		ReclaimInterval: 100 * time.Millisecond,
		PollInterval:    50 * time.Millisecond,
		Handler: func(ctx context.Context, b *batch.Batch) error {
			x.record(b)
			return nil
		},
	})
	waitFor(t, 15*time.Second, "the second worker to complete the batch", func() bool {
		return runnerB.Stats().Completed == 1
	})

	// The first worker comes back; its release is refused.
	proxy.Blackhole(false)
	stopCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	require.NoError(t, runnerA.Stop(stopCtx))
	stA := runnerA.Stats()
	require.EqualValues(t, 1, stA.LeaseLost, "%+v", stA)
	require.Zero(t, stA.Completed)
	require.Positive(t, stA.HeartbeatErrors)

	seen := x.snapshot()
	require.Len(t, seen[b.ID], 1)
	require.NotEqual(t, b.Lease.Token, seen[b.ID][0])
	require.Equal(t, seen[b.ID], e.doneTokens()[b.ID], "completed once, by the second worker's token")
	require.Zero(t, e.count("WHERE queue = 'fence'"))
}

// TestRunnerHeartbeatHoldsLease: a handler that runs longer than the lease
// keeps its batch, because heartbeats renew it; nobody else runs it.
func TestRunnerHeartbeatHoldsLease(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var x executions
	var slowDone atomic.Bool
	slowStarted := make(chan struct{})
	r := startRunner(t, e.client, queue.RunnerConfig{
		Queue:             "slow",
		Concurrency:       2,
		LeaseDuration:     time.Second,
		HeartbeatInterval: 200 * time.Millisecond,
		FenceMargin:       300 * time.Millisecond,
		ReclaimInterval:   50 * time.Millisecond,
		PollInterval:      50 * time.Millisecond,
		Handler: func(ctx context.Context, b *batch.Batch) error {
			x.record(b)
			close(slowStarted)
			select {
			case <-time.After(2500 * time.Millisecond):
				slowDone.Store(true)
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
	})
	ids := enqueueN(t, e.client, "slow", 1)
	<-slowStarted
	// A second runner competes for the batch while it runs.
	r2 := startRunner(t, e.client, queue.RunnerConfig{
		Queue: "slow", Concurrency: 1, ReclaimInterval: 50 * time.Millisecond, PollInterval: 50 * time.Millisecond,
		Handler: func(ctx context.Context, b *batch.Batch) error { x.record(b); return nil },
	})
	waitFor(t, 20*time.Second, "the slow batch to complete", func() bool {
		return r.Stats().Completed+r2.Stats().Completed == 1
	})
	require.True(t, slowDone.Load())
	require.Len(t, x.snapshot()[ids[0]], 1, "the batch must run exactly once")
	require.Zero(t, r.Stats().LeaseLost)
}

// TestRunnerWakesOnNotify: with polling every 10 s, a batch enqueued while
// the runner is idle starts in under 200 ms, through LISTEN/NOTIFY.
func TestRunnerWakesOnNotify(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	startedAt := make(chan time.Time, 1)
	r := startRunner(t, e.client, queue.RunnerConfig{
		Queue:        "wake",
		Concurrency:  1,
		PollInterval: 10 * time.Second,
		Handler: func(ctx context.Context, b *batch.Batch) error {
			startedAt <- time.Now()
			return nil
		},
	})
	ctx := testContext(t)
	var worst time.Duration
	for i := 0; i < 5; i++ {
		// Idle: nothing queued, the previous batch acknowledged.
		waitFor(t, 5*time.Second, "the runner to be idle", func() bool {
			st := r.Stats()
			return st.Running == 0 && st.Completed == int64(i)
		})
		t0 := time.Now()
		_, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "wake", Meta: meta(i)})
		require.NoError(t, err)
		select {
		case at := <-startedAt:
			worst = max(worst, at.Sub(t0))
		case <-time.After(5 * time.Second):
			t.Fatalf("batch %d did not start within 5s: no wake-up", i)
		}
	}
	t.Logf("worst enqueue-to-handler latency over 5 idle enqueues: %s", worst)
	require.Less(t, worst, 200*time.Millisecond)
}

// TestRunnerGracefulStop: Stop waits for handlers that finish in time;
// handlers that do not are cancelled and their batches released, so
// another runner can claim them at once.
func TestRunnerGracefulStop(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	const n = 4
	finish := make(chan struct{})
	started := make(chan int64, 2*n)
	causes := make(chan error, 2*n)
	handler := func(ctx context.Context, b *batch.Batch) error {
		started <- b.ID
		select {
		case <-finish:
			return nil
		case <-ctx.Done():
			causes <- context.Cause(ctx)
			return ctx.Err()
		}
	}
	cfg := queue.RunnerConfig{Queue: "stop", Concurrency: n, PollInterval: 50 * time.Millisecond, Handler: handler}

	// 1. Handlers that finish within the deadline are completed.
	r1 := startRunner(t, e.client, cfg)
	enqueueN(t, e.client, "stop", n)
	for i := 0; i < n; i++ {
		<-started
	}
	stopped := make(chan error, 1)
	go func() { stopped <- r1.Stop(ctx) }()
	select {
	case <-r1.Stopped():
		t.Fatal("Stop returned while handlers were running")
	case <-time.After(100 * time.Millisecond):
	}
	close(finish)
	require.NoError(t, <-stopped)
	require.EqualValues(t, n, r1.Stats().Completed)
	require.Zero(t, e.count("WHERE queue = 'stop'"))

	// 2. Handlers still running at the deadline are cancelled and released.
	finish = make(chan struct{})
	defer close(finish)
	r2 := startRunner(t, e.client, cfg)
	ids := enqueueN(t, e.client, "stop", n)
	for i := 0; i < n; i++ {
		<-started
	}
	deadline, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	err := r2.Stop(deadline)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	for i := 0; i < n; i++ {
		require.ErrorIs(t, <-causes, queue.ErrShutdown)
	}
	require.EqualValues(t, n, r2.Stats().Released)

	got, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "stop", Limit: 10, Lease: time.Minute})
	require.NoError(t, err)
	require.Len(t, got, n, "released batches are claimable at once")
	for i, b := range got {
		require.Equal(t, ids[i], b.ID)
		require.Equal(t, 1, b.Attempt, "the interrupted attempt is not counted")
	}

	// Stop again, and Start after Stop.
	require.NoError(t, r2.Stop(ctx))
	require.ErrorIs(t, r2.Start(ctx), queue.ErrClosed)
}

func TestRunnerStopAndCancel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	started := make(chan struct{}, 2)
	r := startRunner(t, e.client, queue.RunnerConfig{
		Queue: "sac", Concurrency: 2, PollInterval: 50 * time.Millisecond,
		Handler: func(ctx context.Context, b *batch.Batch) error {
			started <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		},
	})
	enqueueN(t, e.client, "sac", 2)
	<-started
	<-started
	t0 := time.Now()
	require.NoError(t, r.StopAndCancel(ctx), "handlers that honour cancellation let StopAndCancel finish cleanly")
	require.Less(t, time.Since(t0), 5*time.Second)
	require.EqualValues(t, 2, r.Stats().Released)
	require.Equal(t, 2, e.count("WHERE queue = 'sac' AND state = 'available' AND attempt = 0"))
}

func TestRunnerFailuresPanicsAndPermanent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, &queue.Config{RetryBase: time.Millisecond, RetryMax: 5 * time.Millisecond, MaxAttempts: 2})
	ctx := testContext(t)
	kinds := []string{"ok", "error", "panic", "permanent", "flaky"}
	var flakyCalls atomic.Int64
	r := startRunner(t, e.client, queue.RunnerConfig{
		Queue: "mixed", Concurrency: 4, PollInterval: 20 * time.Millisecond,
		Handler: func(ctx context.Context, b *batch.Batch) error {
			switch b.PartitionKey {
			case "error":
				return errors.New("handler error")
			case "panic":
				panic("handler exploded")
			case "permanent":
				return queue.Permanent(errors.New("cannot parse"))
			case "flaky":
				if flakyCalls.Add(1) == 1 {
					return errors.New("transient")
				}
			}
			return nil
		},
	})
	idOf := map[string]int64{}
	for i, k := range kinds {
		res, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "mixed", Meta: batch.Meta{URI: fmt.Sprint("s3://b/", i), PartitionKey: k}})
		require.NoError(t, err)
		idOf[k] = res.ID
	}
	waitFor(t, 20*time.Second, "every batch to finish", func() bool {
		st := r.Stats()
		return st.Completed == 2 && st.Dead == 3
	})
	st := r.Stats()
	require.EqualValues(t, 2, st.Panics, "the panicking batch ran twice")
	require.EqualValues(t, 3, st.Retried, "error, panic and flaky were each retried once")

	dead, err := e.client.ListDead(ctx, "mixed", 0, 10)
	require.NoError(t, err)
	require.Len(t, dead, 3)
	byID := map[int64]batch.Batch{}
	for _, d := range dead {
		byID[d.ID] = d
	}
	require.Contains(t, byID[idOf["panic"]].LastError, "handler panic: handler exploded")
	require.Equal(t, 2, byID[idOf["panic"]].Attempt)
	require.Equal(t, "handler error", byID[idOf["error"]].LastError)
	require.Equal(t, 1, byID[idOf["permanent"]].Attempt, "a permanent error is not retried")
	for _, k := range []string{"ok", "flaky"} {
		done, err := e.client.Completed(ctx, idOf[k])
		require.NoError(t, err)
		require.True(t, done, k)
	}
}

func TestRunnerConfigValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	h := func(context.Context, *batch.Batch) error { return nil }
	tests := []struct {
		cfg   queue.RunnerConfig
		field string
	}{
		{queue.RunnerConfig{Handler: h}, "Queue"},
		{queue.RunnerConfig{Queue: "q"}, "Handler"},
		{queue.RunnerConfig{Queue: "q", Handler: h, Concurrency: -1}, "Concurrency"},
		{queue.RunnerConfig{Queue: "q", Handler: h, Concurrency: queue.MaxConcurrency + 1}, "Concurrency"},
		{queue.RunnerConfig{Queue: "q", Handler: h, ClaimSize: -5}, "ClaimSize"},
		{queue.RunnerConfig{Queue: "q", Handler: h, ClaimSize: queue.MaxClaimSize + 1}, "ClaimSize"},
		{queue.RunnerConfig{Queue: "q", Handler: h, LeaseDuration: -time.Second}, "LeaseDuration"},
		{queue.RunnerConfig{Queue: "q", Handler: h, LeaseDuration: 100 * time.Millisecond}, "LeaseDuration"},
		{queue.RunnerConfig{Queue: "q", Handler: h, FenceMargin: time.Minute}, "FenceMargin"},
		{queue.RunnerConfig{Queue: "q", Handler: h, HeartbeatInterval: time.Hour}, "HeartbeatInterval"},
		{queue.RunnerConfig{Queue: "q", Handler: h, PollInterval: -1}, "PollInterval"},
	}
	for _, tt := range tests {
		_, err := queue.NewRunner(e.client, &tt.cfg)
		var ae *queue.ArgumentError
		require.ErrorAs(t, err, &ae, "%+v", tt.cfg)
		require.Equal(t, tt.field, ae.Field)
	}
	_, err := queue.NewRunner(nil, &queue.RunnerConfig{Queue: "q", Handler: h})
	require.ErrorIs(t, err, queue.ErrInvalid)

	// Stop before Start is fine; Start after it is not.
	r, err := queue.NewRunner(e.client, &queue.RunnerConfig{Queue: "q", Handler: h})
	require.NoError(t, err)
	require.NoError(t, r.Stop(testContext(t)))
	require.NoError(t, r.Stop(testContext(t)))
	require.ErrorIs(t, r.Start(testContext(t)), queue.ErrClosed)

	// A schema without tables fails fast at Start.
	bare := newClient(t, e.pool, e.schema+"_missing", nil)
	r, err = queue.NewRunner(bare, &queue.RunnerConfig{Queue: "q", Handler: h})
	require.NoError(t, err)
	err = r.Start(testContext(t))
	require.ErrorContains(t, err, "migrations")
	require.NoError(t, r.Stop(testContext(t)))
}
