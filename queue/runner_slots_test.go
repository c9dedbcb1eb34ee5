package queue_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// claimGroups returns how many running batches of queueName each lease
// token holds, sorted. Every claim round trip takes its batches under one
// fresh token, so each group is (what is left of) one claim.
func (e *env) claimGroups(queueName string) []int {
	e.t.Helper()
	rows, err := e.pool.Query(context.Background(),
		"SELECT count(*) FROM "+e.q("batch")+" WHERE queue = $1 AND state = 'running' GROUP BY lease_token", queueName)
	require.NoError(e.t, err)
	defer rows.Close()
	var out []int
	for rows.Next() {
		var n int
		require.NoError(e.t, rows.Scan(&n))
		out = append(out, n)
	}
	require.NoError(e.t, rows.Err())
	slices.Sort(out)
	return out
}

// heldHandler holds every batch until one receive on release lets it
// complete (or its context ends). started counts handler calls.
func heldHandler(release <-chan struct{}, started *atomic.Int64) queue.HandlerFunc {
	return func(ctx context.Context, _ *batch.Batch) error {
		started.Add(1)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func claimRoundTrips(r *queue.Runner) int64 {
	st := r.Stats()
	return st.FullClaims + st.FlooredClaims
}

// TestRunnerClaimsSizedByFreeSlots: a runner claims for its free handler
// slots, never for more, however large ClaimSize and the backlog are; one
// round trip fills the slots that freed up. Observed in the database: the
// batches held (state running) and the claim each came from (its token).
func TestRunnerClaimsSizedByFreeSlots(t *testing.T) {
	t.Parallel()
	const slots, backlog = 8, 50
	e := newEnv(t, nil)
	enqueueN(t, e.client, "slots", backlog) // before Start: the first claim sees them all
	release := make(chan struct{})
	var started atomic.Int64
	r := startRunner(t, e.client, queue.RunnerConfig{
		Queue: "slots", Concurrency: slots, ClaimSize: 100, PollInterval: 20 * time.Millisecond,
		Handler: heldHandler(release, &started),
	})

	// All slots free: one claim of Concurrency batches, not of ClaimSize.
	waitFor(t, 10*time.Second, "8 handlers to start", func() bool { return started.Load() == slots })
	require.Equal(t, []int{slots}, e.claimGroups("slots"), "one round trip claims every free slot and no more")
	require.EqualValues(t, slots, r.Stats().Claimed)
	require.EqualValues(t, 1, claimRoundTrips(r))

	// Four handlers finish (half the slots, the least the runner claims
	// for while others run): the next claim takes exactly four, at once.
	const k = slots / 2
	for range k {
		release <- struct{}{}
	}
	waitFor(t, 10*time.Second, "4 more handlers to start", func() bool { return started.Load() == slots+k })
	require.Equal(t, []int{k, slots - k}, e.claimGroups("slots"), "the freed slots are filled by one claim")
	require.EqualValues(t, slots+k, r.Stats().Claimed)
	require.EqualValues(t, 2, claimRoundTrips(r))
	waitFor(t, 10*time.Second, "the 4 completions", func() bool { return r.Stats().Completed == k })
	require.Equal(t, backlog-k, e.count("WHERE queue = 'slots'"))
	require.Equal(t, backlog-k-slots, e.count("WHERE queue = 'slots' AND state = 'available'"))
}

// TestRunnerClaimSizeCapsEachClaim: with fewer batches per claim allowed
// than slots, the runner fills its slots with consecutive claims of at most
// ClaimSize each.
func TestRunnerClaimSizeCapsEachClaim(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	enqueueN(t, e.client, "capped", 50)
	release := make(chan struct{})
	var started atomic.Int64
	r := startRunner(t, e.client, queue.RunnerConfig{
		Queue: "capped", Concurrency: 8, ClaimSize: 3, PollInterval: 20 * time.Millisecond,
		Handler: heldHandler(release, &started),
	})
	waitFor(t, 10*time.Second, "8 handlers to start", func() bool { return started.Load() == 8 })
	require.Equal(t, []int{2, 3, 3}, e.claimGroups("capped"), "claims of 3, 3 and the last 2 free slots")
	require.EqualValues(t, 3, claimRoundTrips(r))
}

// TestRunnerClaimSizeDefault: by default a claim may fill every slot.
func TestRunnerClaimSizeDefault(t *testing.T) {
	for _, tc := range []struct{ concurrency, want int }{
		{0, queue.ConcurrencyDefault},
		{1, 1},
		{256, 256},
		{queue.MaxClaimSize + 1, queue.MaxClaimSize},
	} {
		got := (&queue.RunnerConfig{Concurrency: tc.concurrency}).WithDefaults().ClaimSize
		require.Equal(t, tc.want, got, "Concurrency %d", tc.concurrency)
	}
	require.Equal(t, 7, (&queue.RunnerConfig{Concurrency: 64, ClaimSize: 7}).WithDefaults().ClaimSize, "a set ClaimSize is kept")
}
