package queue_test

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// derefErr's Error dereferences its receiver: a nil *derefErr returned as
// error panics when its text is asked for.
type derefErr struct{ msg string }

func (e *derefErr) Error() string { return e.msg }

// nilSafeErr is fine as a typed nil.
type nilSafeErr struct{}

func (e *nilSafeErr) Error() string { return "typed nil, safe" }

type panicErr struct{}

func (panicErr) Error() string { panic("Error exploded") }

type hugeErr struct{}

func (hugeErr) Error() string { return strings.Repeat("x", 5<<20) }

// blockErr's Error blocks until its channel is closed.
type blockErr struct{ release <-chan struct{} }

func (e blockErr) Error() string { <-e.release; return "late" }

// dbRow is a batch row as the misbehaving-handler tests assert it.
type dbRow struct {
	state     string
	attempt   int
	lastError string
	rows      int
}

func (e *env) dbRow(id int64) dbRow {
	e.t.Helper()
	var r dbRow
	rows, err := e.pool.Query(context.Background(),
		"SELECT state::text, attempt, coalesce(last_error, '') FROM "+e.q("batch")+" WHERE id = $1", id)
	require.NoError(e.t, err)
	defer rows.Close()
	for rows.Next() {
		r.rows++
		require.NoError(e.t, rows.Scan(&r.state, &r.attempt, &r.lastError))
	}
	require.NoError(e.t, rows.Err())
	return r
}

// TestMisbehavingHandlers: every way a handler can misbehave ends as a
// recorded failed attempt (or a lease-lost outcome), never as a crash, a
// completion or a lost slot. Each case runs a runner with Concurrency 1
// and MaxAttempts 1 on its own schema: the bad batch must end dead with
// the expected last_error, and a good batch enqueued after it must still
// be completed by the same runner (the slot survived).
func TestMisbehavingHandlers(t *testing.T) {
	t.Parallel()
	type stats = queue.RunnerStats
	cases := []struct {
		name string
		cfg  func(*queue.RunnerConfig)
		// handler for the bad batch; release is closed at the end of the test.
		handler func(ctx context.Context, release <-chan struct{}) error
		// setup runs once the bad batch's handler has started.
		whileRunning func(e *env, id int64)
		wantState    string
		wantError    func(t *testing.T, lastError string)
		wantStats    func(t *testing.T, st stats)
	}{
		{
			name:    "panic",
			handler: func(context.Context, <-chan struct{}) error { panic("boom") },
			wantError: func(t *testing.T, s string) {
				require.True(t, strings.HasPrefix(s, "handler panic: boom\n"), s)
			},
			wantStats: func(t *testing.T, st stats) { require.EqualValues(t, 1, st.Panics) },
		},
		{
			name:    "panic with an error value whose Error panics",
			handler: func(context.Context, <-chan struct{}) error { panic(panicErr{}) },
			wantError: func(t *testing.T, s string) {
				require.True(t, strings.HasPrefix(s, "handler panic: a value of type queue_test.panicErr\n"), s)
			},
			wantStats: func(t *testing.T, st stats) { require.EqualValues(t, 1, st.Panics) },
		},
		{
			name: "runtime.Goexit",
			handler: func(context.Context, <-chan struct{}) error {
				runtime.Goexit()
				return nil
			},
			wantError: func(t *testing.T, s string) { require.Equal(t, queue.ErrHandlerGoexit.Error(), s) },
			wantStats: func(t *testing.T, st stats) { require.EqualValues(t, 1, st.Goexits) },
		},
		{
			name: "typed nil error whose Error panics",
			handler: func(context.Context, <-chan struct{}) error {
				var e *derefErr
				return e
			},
			wantError: func(t *testing.T, s string) {
				require.True(t, strings.HasPrefix(s, "error text unavailable: Error or Unwrap of *queue_test.derefErr panicked: "), s)
			},
		},
		{
			name: "typed nil error that is safe",
			handler: func(context.Context, <-chan struct{}) error {
				var e *nilSafeErr
				return e
			},
			wantError: func(t *testing.T, s string) { require.Equal(t, "typed nil, safe", s) },
		},
		{
			name:    "Error panics",
			handler: func(context.Context, <-chan struct{}) error { return panicErr{} },
			wantError: func(t *testing.T, s string) {
				require.Equal(t, "error text unavailable: Error or Unwrap of queue_test.panicErr panicked: Error exploded", s)
			},
		},
		{
			name:    "Error returns megabytes",
			handler: func(context.Context, <-chan struct{}) error { return hugeErr{} },
			wantError: func(t *testing.T, s string) {
				require.LessOrEqual(t, len(s), batch.MaxLastErrorBytes)
				require.True(t, strings.HasSuffix(s, "…"), "cut with the marker")
				require.True(t, strings.HasPrefix(s, "xxxx"))
			},
		},
		{
			name: "Error blocks",
			handler: func(_ context.Context, release <-chan struct{}) error {
				return blockErr{release: release}
			},
			wantError: func(t *testing.T, s string) {
				require.Equal(t, "error text unavailable: Error or Unwrap of queue_test.blockErr did not return within 1s", s)
			},
		},
		{
			name: "returns when its timeout cancels it",
			cfg: func(c *queue.RunnerConfig) {
				c.HandlerTimeout = -1 // none, but the per-batch override sets one
				c.HandlerTimeoutFunc = func(*batch.Batch) time.Duration { return 300 * time.Millisecond }
			},
			handler: func(ctx context.Context, _ <-chan struct{}) error {
				<-ctx.Done()
				return context.Cause(ctx)
			},
			wantError: func(t *testing.T, s string) {
				require.Equal(t, "skiplock: handler timeout after 300ms: skiplock: handler timeout", s)
			},
			wantStats: func(t *testing.T, st stats) {
				require.EqualValues(t, 1, st.TimedOut)
				require.Zero(t, st.Abandoned)
			},
		},
		{
			name: "ignores its cancelled context",
			cfg: func(c *queue.RunnerConfig) {
				c.HandlerTimeout = 300 * time.Millisecond
				c.HandlerGrace = 300 * time.Millisecond
			},
			handler: func(_ context.Context, release <-chan struct{}) error {
				<-release
				return nil // would complete it, but comes too late
			},
			wantError: func(t *testing.T, s string) {
				require.Equal(t, queue.ErrHandlerAbandoned.Error()+" (handler timeout 300ms, grace 300ms)", s)
			},
			wantStats: func(t *testing.T, st stats) {
				require.EqualValues(t, 1, st.TimedOut)
				require.EqualValues(t, 1, st.Abandoned)
				require.Equal(t, 1, st.Stuck)
			},
		},
		{
			name: "outlives its lease",
			cfg: func(c *queue.RunnerConfig) {
				c.LeaseDuration = time.Second
				c.HandlerGrace = 300 * time.Millisecond
			},
			handler: func(_ context.Context, release <-chan struct{}) error {
				<-release
				return nil
			},
			whileRunning: func(e *env, id int64) {
				// Another claim takes the batch over: the next renewal finds
				// the lease lost.
				e.exec("UPDATE "+e.q("batch")+" SET lease_token = lease_token + 1 WHERE id = $1", id)
			},
			wantState: "running",
			wantError: func(t *testing.T, s string) { require.Empty(t, s) },
			wantStats: func(t *testing.T, st stats) {
				require.EqualValues(t, 1, st.Abandoned)
				require.EqualValues(t, 1, st.LeaseLost)
				require.Zero(t, st.Dead)
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, &queue.Config{MaxAttempts: 1})
			ctx := testContext(t)
			release := make(chan struct{})
			started := make(chan struct{}, 1)
			cfg := queue.RunnerConfig{
				Queue: "q", Concurrency: 1, PollInterval: 20 * time.Millisecond,
				Handler: func(ctx context.Context, b *batch.Batch) error {
					if b.PartitionKey == "good" {
						return nil
					}
					started <- struct{}{}
					return tc.handler(ctx, release)
				},
			}
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			r, err := queue.NewRunner(e.client, &cfg)
			require.NoError(t, err)
			require.NoError(t, r.Start(ctx))
			var stopOnce sync.Once
			stop := func() {
				stopOnce.Do(func() {
					sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					require.NoError(t, r.Stop(sctx))
				})
			}
			defer func() {
				stop()
				close(release)
				waitFor(t, 30*time.Second, "abandoned handlers to return", func() bool { return r.Stats().Stuck == 0 })
			}()

			bad, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "q", Meta: batch.Meta{URI: "s3://b/bad"}})
			require.NoError(t, err)
			select {
			case <-started:
			case <-ctx.Done():
				t.Fatal("the bad batch never started")
			}
			if tc.whileRunning != nil {
				tc.whileRunning(e, bad.ID)
			}
			want := tc.wantState
			if want == "" {
				want = "dead"
			}
			waitFor(t, 30*time.Second, "the bad batch's outcome", func() bool {
				st := r.Stats()
				return st.Dead+st.LeaseLost+st.Completed+st.Released >= 1
			})
			good, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "q", Meta: batch.Meta{URI: "s3://b/good", PartitionKey: "good"}})
			require.NoError(t, err)
			waitFor(t, 30*time.Second, "the good batch to complete in the same slot", func() bool { return r.Stats().Completed == 1 })
			done, err := e.client.Completed(ctx, good.ID)
			require.NoError(t, err)
			require.True(t, done)

			got := e.dbRow(bad.ID)
			require.Equal(t, 1, got.rows, "the bad batch is still in the table")
			require.Equal(t, want, got.state)
			require.Equal(t, 1, got.attempt)
			tc.wantError(t, got.lastError)
			badDone, err := e.client.Completed(ctx, bad.ID)
			require.NoError(t, err)
			require.False(t, badDone, "never completed")

			st := r.Stats()
			require.EqualValues(t, 2, st.Claimed)
			require.EqualValues(t, 1, st.Completed, "only the good batch")
			require.Zero(t, st.Released)
			require.Zero(t, st.Retried)
			if want == "dead" {
				require.EqualValues(t, 1, st.Dead)
			}
			if tc.wantStats != nil {
				tc.wantStats(t, st)
			}
		})
	}
}

// TestHangingPoisonBatchDeadLettersAcrossRestarts: a batch whose handler
// hangs reaches MaxAttempts and is dead-lettered although every worker
// that runs it is stopped (a restart: a new Runner on the same schema)
// after one attempt — whether the handler is abandoned after its grace or
// returns only when the stopping runner cancels it.
func TestHangingPoisonBatchDeadLettersAcrossRestarts(t *testing.T) {
	t.Parallel()
	const maxAttempts = 3
	for _, mode := range []string{"abandoned", "returns at stop"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, &queue.Config{MaxAttempts: maxAttempts, RetryBase: time.Millisecond, RetryMax: 5 * time.Millisecond})
			ctx := testContext(t)
			res, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "poison", Meta: batch.Meta{URI: "s3://b/poison"}})
			require.NoError(t, err)
			hang := make(chan struct{}) // closed at the end: abandoned handlers return then
			var runners []*queue.Runner
			defer func() {
				close(hang)
				for _, r := range runners {
					waitFor(t, 30*time.Second, "abandoned handlers to return", func() bool { return r.Stats().Stuck == 0 })
				}
			}()
			for cycle := 1; cycle <= maxAttempts; cycle++ {
				cfg := queue.RunnerConfig{
					Queue: "poison", Concurrency: 2, PollInterval: 20 * time.Millisecond,
					HandlerTimeout: 200 * time.Millisecond, HandlerGrace: 200 * time.Millisecond,
				}
				stopping := make(chan struct{})
				if mode == "returns at stop" {
					cfg.HandlerGrace = 10 * time.Minute // never abandoned
				}
				cfg.Handler = func(ctx context.Context, b *batch.Batch) error {
					if mode == "abandoned" {
						<-hang // ignores ctx
						return nil
					}
					<-stopping // ignores the timeout; returns once the runner stops
					return ctx.Err()
				}
				r, err := queue.NewRunner(e.client, &cfg)
				require.NoError(t, err)
				runners = append(runners, r)
				require.NoError(t, r.Start(ctx))
				// Stop as soon as the timeout fired, before the attempt is
				// acknowledged: no claim starts after Stop began, so this
				// runner cannot run the batch a second time.
				waitFor(t, 30*time.Second, "the handler to time out", func() bool { return r.Stats().TimedOut == 1 })
				stopped := make(chan error, 1)
				go func() {
					sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					stopped <- r.StopAndCancel(sctx)
				}()
				close(stopping)
				select {
				case err := <-stopped:
					require.NoError(t, err)
				case <-time.After(60 * time.Second):
					t.Fatal("Stop did not return")
				}
				st := r.Stats()
				require.Zero(t, st.Released, "cycle %d: a handler past its timeout is failed, not released", cycle)
				require.EqualValues(t, 1, st.Retried+st.Dead, "cycle %d", cycle)
				got := e.dbRow(res.ID)
				require.Equal(t, cycle, got.attempt, "cycle %d", cycle)
				if cycle < maxAttempts {
					require.Equal(t, "available", got.state, "cycle %d", cycle)
					require.EqualValues(t, 1, st.Retried)
				} else {
					require.Equal(t, "dead", got.state)
					require.EqualValues(t, 1, st.Dead)
					require.Contains(t, got.lastError, "skiplock: handler")
				}
			}
			dead, err := e.client.ListDead(ctx, "poison", 0, 10)
			require.NoError(t, err)
			require.Len(t, dead, 1)
			require.Equal(t, maxAttempts, dead[0].Attempt)
		})
	}
}

// TestClientFailUntrustedErrors: Fail and FailMany never panic or hang on
// the error they are given; they record a placeholder text instead.
func TestClientFailUntrustedErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t, &queue.Config{MaxAttempts: 1})
	ctx := testContext(t)
	enqueueN(t, e.client, "f", 3)
	bs, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "f", Limit: 3, Lease: time.Minute})
	require.NoError(t, err)
	require.Len(t, bs, 3)
	var nilErr *derefErr
	dead, err := e.client.Fail(ctx, queue.RefOf(&bs[0]), nilErr)
	require.NoError(t, err)
	require.True(t, dead)
	release := make(chan struct{})
	defer close(release)
	res, err := e.client.FailMany(ctx, []queue.Failure{
		{Ref: queue.RefOf(&bs[1]), Err: panicErr{}},
		{Ref: queue.RefOf(&bs[2]), Err: blockErr{release: release}},
	})
	require.NoError(t, err)
	require.ElementsMatch(t, []int64{bs[1].ID, bs[2].ID}, res.Dead)
	require.True(t, strings.HasPrefix(e.dbRow(bs[0].ID).lastError, "error text unavailable: Error or Unwrap of *queue_test.derefErr panicked: "))
	require.Equal(t, "error text unavailable: Error or Unwrap of queue_test.panicErr panicked: Error exploded", e.dbRow(bs[1].ID).lastError)
	require.Equal(t, "error text unavailable: Error or Unwrap of queue_test.blockErr did not return within 1s", e.dbRow(bs[2].ID).lastError)
	for _, b := range bs {
		require.Equal(t, "dead", e.dbRow(b.ID).state)
	}
}
