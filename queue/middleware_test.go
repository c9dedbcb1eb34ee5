package queue_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// Middleware runs around the handler, first element outermost, sees the
// batch, its context and its error, and what it returns is the outcome.
func TestMiddlewareWrapsHandler(t *testing.T) {
	t.Parallel()
	e := newEnv(t, &queue.Config{MaxAttempts: 1})
	ctx := testContext(t)
	var mu sync.Mutex
	var trace []string
	note := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		trace = append(trace, s)
	}
	layer := func(name string) queue.MiddlewareFunc {
		return func(next queue.HandlerFunc) queue.HandlerFunc {
			return func(ctx context.Context, b *batch.Batch) error {
				note(name + ">" + b.URI)
				err := next(ctx, b)
				note(name + "<" + errText(err))
				if name == "outer" && b.URI == "s3://m/veto" {
					return errors.New("vetoed by middleware")
				}
				return err
			}
		}
	}
	r := startRunner(t, e.client, queue.RunnerConfig{
		Queue: "mw", Concurrency: 1, PollInterval: 20 * time.Millisecond,
		Middleware: []queue.MiddlewareFunc{layer("outer"), layer("inner")},
		Handler: func(_ context.Context, b *batch.Batch) error {
			note("handler " + b.URI)
			if b.URI == "s3://m/fail" {
				return errors.New("handler failed")
			}
			return nil
		},
	})
	ids := map[string]int64{}
	for _, uri := range []string{"s3://m/ok", "s3://m/fail", "s3://m/veto"} {
		res, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "mw", Meta: batch.Meta{URI: uri}})
		require.NoError(t, err)
		ids[uri] = res.ID
		waitFor(t, 20*time.Second, uri+" settled", func() bool {
			st := r.Stats()
			return st.Completed+st.Dead == int64(len(ids))
		})
	}
	mu.Lock()
	require.Equal(t, []string{
		"outer>s3://m/ok", "inner>s3://m/ok", "handler s3://m/ok", "inner<", "outer<",
		"outer>s3://m/fail", "inner>s3://m/fail", "handler s3://m/fail", "inner<handler failed", "outer<handler failed",
		"outer>s3://m/veto", "inner>s3://m/veto", "handler s3://m/veto", "inner<", "outer<",
	}, trace)
	mu.Unlock()
	require.Equal(t, "dead", e.dbRow(ids["s3://m/fail"]).state)
	veto := e.dbRow(ids["s3://m/veto"])
	require.Equal(t, "dead", veto.state, "the middleware's error is the outcome")
	require.Equal(t, "vetoed by middleware", veto.lastError)
	done, err := e.client.Completed(ctx, ids["s3://m/ok"])
	require.NoError(t, err)
	require.True(t, done)
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// A middleware that panics, calls runtime.Goexit or never returns is
// handled exactly like a handler doing it: the attempt fails with the same
// recorded error, the slot survives (a good batch completes after it), and
// the runner stops within its deadline.
func TestMisbehavingMiddleware(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		cfg       func(*queue.RunnerConfig)
		bad       func(ctx context.Context, release <-chan struct{}) error
		wantError func(t *testing.T, lastError string)
		wantStats func(t *testing.T, st queue.RunnerStats)
	}{
		{
			name: "panic",
			bad:  func(context.Context, <-chan struct{}) error { panic("middleware boom") },
			wantError: func(t *testing.T, s string) {
				require.True(t, strings.HasPrefix(s, "handler panic: middleware boom\n"), s)
			},
			wantStats: func(t *testing.T, st queue.RunnerStats) { require.EqualValues(t, 1, st.Panics) },
		},
		{
			name: "runtime.Goexit",
			bad: func(context.Context, <-chan struct{}) error {
				runtime.Goexit()
				return nil
			},
			wantError: func(t *testing.T, s string) { require.Equal(t, queue.ErrHandlerGoexit.Error(), s) },
			wantStats: func(t *testing.T, st queue.RunnerStats) { require.EqualValues(t, 1, st.Goexits) },
		},
		{
			name: "never returns",
			cfg: func(c *queue.RunnerConfig) {
				c.HandlerTimeout = 300 * time.Millisecond
				c.HandlerGrace = 300 * time.Millisecond
			},
			bad: func(_ context.Context, release <-chan struct{}) error {
				<-release // ignores its context
				return nil
			},
			wantError: func(t *testing.T, s string) {
				require.Equal(t, queue.ErrHandlerAbandoned.Error()+" (handler timeout 300ms, grace 300ms)", s)
			},
			wantStats: func(t *testing.T, st queue.RunnerStats) {
				require.EqualValues(t, 1, st.Abandoned)
				require.Equal(t, 1, st.Stuck)
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, &queue.Config{MaxAttempts: 1})
			ctx := testContext(t)
			release := make(chan struct{})
			var handled sync.Map
			cfg := queue.RunnerConfig{
				Queue: "q", Concurrency: 1, PollInterval: 20 * time.Millisecond,
				Middleware: []queue.MiddlewareFunc{func(next queue.HandlerFunc) queue.HandlerFunc {
					return func(ctx context.Context, b *batch.Batch) error {
						if b.PartitionKey == "good" {
							return next(ctx, b)
						}
						return tc.bad(ctx, release)
					}
				}},
				Handler: func(_ context.Context, b *batch.Batch) error {
					handled.Store(b.ID, true)
					return nil
				},
			}
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			r, err := queue.NewRunner(e.client, &cfg)
			require.NoError(t, err)
			require.NoError(t, r.Start(ctx))
			stopped := false
			defer func() {
				if !stopped {
					sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					_ = r.StopAndCancel(sctx)
					cancel()
				}
				close(release)
				waitFor(t, 30*time.Second, "abandoned handlers to return", func() bool { return r.Stats().Stuck == 0 })
			}()

			bad, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "q", Meta: batch.Meta{URI: "s3://b/bad"}})
			require.NoError(t, err)
			waitFor(t, 30*time.Second, "the bad batch's outcome", func() bool { return r.Stats().Dead == 1 })
			good, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "q", Meta: batch.Meta{URI: "s3://b/good", PartitionKey: "good"}})
			require.NoError(t, err)
			waitFor(t, 30*time.Second, "the good batch to complete in the same slot", func() bool { return r.Stats().Completed == 1 })
			_, ran := handled.Load(good.ID)
			require.True(t, ran)
			_, ran = handled.Load(bad.ID)
			require.False(t, ran, "the middleware never called the handler for the bad batch")

			got := e.dbRow(bad.ID)
			require.Equal(t, "dead", got.state)
			tc.wantError(t, got.lastError)
			tc.wantStats(t, r.Stats())

			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			t0 := time.Now()
			require.NoError(t, r.Stop(sctx))
			stopped = true
			require.Less(t, time.Since(t0), 5*time.Second)
		})
	}
}

// NewRunner refuses a nil middleware, one that returns nil, and one that
// panics while wrapping, naming it.
func TestMiddlewareValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ok := func(next queue.HandlerFunc) queue.HandlerFunc { return next }
	for name, tc := range map[string]struct {
		mws   []queue.MiddlewareFunc
		field string
	}{
		"nil":         {[]queue.MiddlewareFunc{ok, nil}, "Middleware[1]"},
		"returns nil": {[]queue.MiddlewareFunc{func(queue.HandlerFunc) queue.HandlerFunc { return nil }}, "Middleware[0]"},
		"panics":      {[]queue.MiddlewareFunc{ok, ok, func(queue.HandlerFunc) queue.HandlerFunc { panic("no") }}, "Middleware[2]"},
	} {
		_, err := queue.NewRunner(e.client, &queue.RunnerConfig{
			Queue: "q", Middleware: tc.mws,
			Handler: func(context.Context, *batch.Batch) error { return nil },
		})
		var ae *queue.ArgumentError
		require.ErrorAs(t, err, &ae, name)
		require.Equal(t, tc.field, ae.Field, name)
	}
}
