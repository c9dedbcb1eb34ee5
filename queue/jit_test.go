package queue_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

// TestRoundTripsNeverJIT: on a server where every statement's estimate
// crosses jit_above_cost (as a claim's does once an old snapshot has grown
// the table to gigabytes), claims (Client.Claim's and the runner's),
// reclaims, and the completions that share the runner's round trips compile
// nothing, while a statement outside them does: the guard, not the
// server's settings, keeps them cheap.
func TestRoundTripsNeverJIT(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	srv, err := pgtest.StartPrimary(ctx, &pgtest.Options{Settings: map[string]string{
		"shared_preload_libraries": "pg_stat_statements",
		"jit_above_cost":           "0",
		// Compile, but cheaply: the test needs JIT to happen, not to be good.
		"jit_inline_above_cost":   "-1",
		"jit_optimize_above_cost": "-1",
	}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	url := srv.ConnString("postgres")
	pool := newPool(t, url, 10)

	var available bool
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_jit_available()`).Scan(&available))
	require.True(t, available, "this PostgreSQL cannot JIT (no llvmjit): the test would prove nothing")
	_, err = pool.Exec(ctx, `CREATE EXTENSION pg_stat_statements`)
	require.NoError(t, err)
	m, err := migrations.New(pool, &migrations.Config{Schema: "jit"})
	require.NoError(t, err)
	_, err = m.Up(ctx)
	require.NoError(t, err)
	client := newClient(t, pool, "jit", nil)

	const total, byHand = 300, 5
	enqueueN(t, client, "jit", total+byHand)
	got, err := client.Claim(ctx, queue.ClaimParams{Queue: "jit", Limit: byHand, Lease: time.Minute})
	require.NoError(t, err)
	require.Len(t, got, byHand)
	for i := range got {
		require.NoError(t, client.Complete(ctx, queue.RefOf(&got[i])))
	}
	calls := func(prefix string) (n, jitFunctions int64) {
		require.NoError(t, pool.QueryRow(ctx, `SELECT coalesce(sum(calls), 0)::int8, coalesce(sum(jit_functions), 0)::int8
FROM pg_stat_statements WHERE query LIKE $1`, prefix+"%").Scan(&n, &jitFunctions))
		return n, jitFunctions
	}
	n, jit := calls("WITH picked AS")
	require.EqualValues(t, 1, n, "Client.Claim's statement")
	require.Zero(t, jit, "Client.Claim compiled %d functions", jit)
	// Client.Complete runs on its own, outside the guard (its cost does not
	// grow with the table): from here on only the runner's statements count.
	_, err = pool.Exec(ctx, `SELECT pg_stat_statements_reset()`)
	require.NoError(t, err)
	var handled atomic.Int64
	r := startRunner(t, client, queue.RunnerConfig{
		Queue:           "jit",
		Concurrency:     4,
		ClaimSize:       5,
		ReclaimInterval: 100 * time.Millisecond,
		Handler: func(ctx context.Context, b *batch.Batch) error {
			handled.Add(1)
			return nil
		},
	})
	waitFor(t, time.Minute, "every batch handled and a reclaim run", func() bool {
		n, _ := calls("WITH expired AS")
		return handled.Load() == total && n > 0
	})
	require.NoError(t, r.Stop(ctx))
	require.EqualValues(t, total, r.Stats().Completed)

	for _, s := range []struct{ what, prefix string }{
		{"full claims", "WITH picked AS"},
		{"claims from a floor", "WITH urgent AS"},
		{"reclaims", "WITH expired AS"},
		{"completions", "WITH gone AS"},
	} {
		n, jit := calls(s.prefix)
		require.Positive(t, n, "no %s ran: the test exercised nothing", s.what)
		require.Zero(t, jit, "%s compiled %d functions", s.what, jit)
	}
	// The control: the same server compiles a statement on the same table
	// outside the guard.
	var left int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM jit.batch WHERE state = 'available'`).Scan(&left))
	require.Zero(t, left)
	_, jit = calls("SELECT count(*) FROM jit.batch")
	require.Positive(t, jit, "the server compiled nothing at all: JIT is not on, and the test proves nothing")
}
