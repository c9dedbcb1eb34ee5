package queue_test

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

func TestClaimOrderPriorityAndRunAt(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	add := func(i int, prio int16, p queue.EnqueueParams) int64 {
		p.Queue, p.Meta, p.Priority = "order", meta(i), prio
		res, err := e.client.Enqueue(ctx, p)
		require.NoError(t, err)
		return res.ID
	}
	a := add(1, 5, queue.EnqueueParams{})
	b := add(2, 1, queue.EnqueueParams{})
	c := add(3, 3, queue.EnqueueParams{})
	d := add(4, 1, queue.EnqueueParams{})
	past := add(5, 3, queue.EnqueueParams{RunAt: time.Now().Add(-time.Hour)})
	later := add(6, 0, queue.EnqueueParams{Delay: time.Hour})
	future := add(7, 0, queue.EnqueueParams{RunAt: time.Now().Add(time.Hour)})

	got, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "order", Limit: 10, Lease: time.Minute})
	require.NoError(t, err)
	var ids []int64
	for _, g := range got {
		ids = append(ids, g.ID)
		require.Equal(t, batch.StateRunning, g.State)
		require.Equal(t, 1, g.Attempt)
		require.NotZero(t, g.Lease.Token)
		require.Equal(t, got[0].Lease.Token, g.Lease.Token)
		require.True(t, g.Lease.ExpiresAt.After(time.Now().Add(30*time.Second)))
	}
	// Priority first, then run-at (the back-dated one leads its priority), then id.
	require.Equal(t, []int64{b, d, past, c, a}, ids)

	for _, id := range []int64{later, future} {
		bt, err := e.client.Get(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batch.StateAvailable, bt.State, "scheduled batches are not claimed early")
	}
	e.exec("UPDATE "+e.q("batch")+" SET run_at = now() - interval '1 second' WHERE id = ANY($1)", []int64{later, future})
	got, err = e.client.Claim(ctx, queue.ClaimParams{Queue: "order", Limit: 10, Lease: time.Minute})
	require.NoError(t, err)
	require.Len(t, got, 2, "due batches become claimable")

	// Queues are separate.
	got, err = e.client.Claim(ctx, queue.ClaimParams{Queue: "other", Limit: 10, Lease: time.Minute})
	require.NoError(t, err)
	require.Empty(t, got)
}

// TestLeaseLost follows the scenario: a worker stops heartbeating,
// loses its lease, another worker finishes the batch, the first worker's
// late Complete is refused and the second's repeated Complete succeeds.
func TestLeaseLost(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	enqueueN(t, e.client, "lease", 1)

	first, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "lease", Limit: 1, Lease: time.Second, Owner: "worker-1"})
	require.NoError(t, err)
	require.Len(t, first, 1)
	a := queue.RefOf(&first[0])

	// While the lease holds, nothing is reclaimed and nobody else claims it.
	n, _, err := e.client.ReclaimExpired(ctx, "lease")
	require.NoError(t, err)
	require.Zero(t, n)
	other, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "lease", Limit: 1, Lease: time.Minute})
	require.NoError(t, err)
	require.Empty(t, other)

	// worker-1 stops heartbeating; once its lease expires it is reclaimed.
	waitFor(t, 10*time.Second, "the lease to expire and be reclaimed", func() bool {
		n, _, err := e.client.ReclaimExpired(ctx, "lease")
		require.NoError(t, err)
		return n == 1
	})
	reclaimed, err := e.client.Get(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, batch.StateAvailable, reclaimed.State)
	require.Contains(t, reclaimed.LastError, "worker-1")

	second, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "lease", Limit: 1, Lease: time.Minute, Owner: "worker-2"})
	require.NoError(t, err)
	require.Len(t, second, 1)
	b := queue.RefOf(&second[0])
	require.Equal(t, a.ID, b.ID)
	require.NotEqual(t, a.Token, b.Token)
	require.Equal(t, 2, second[0].Attempt)

	require.ErrorIs(t, e.client.Extend(ctx, a, time.Minute), queue.ErrLeaseLost)
	require.ErrorIs(t, e.client.Release(ctx, a), queue.ErrLeaseLost)
	_, err = e.client.Fail(ctx, a, errors.New("late"))
	require.ErrorIs(t, err, queue.ErrLeaseLost)
	require.NoError(t, e.client.Extend(ctx, b, time.Minute))

	require.NoError(t, e.client.Complete(ctx, b))
	require.ErrorIs(t, e.client.Complete(ctx, a), queue.ErrLeaseLost, "the first worker's late completion is refused")
	require.NoError(t, e.client.Complete(ctx, b), "repeating the owner's completion succeeds")

	var tokens []int64
	rows, err := e.pool.Query(ctx, "SELECT lease_token FROM "+e.q("batch_done")+" WHERE id = $1", a.ID)
	require.NoError(t, err)
	for rows.Next() {
		var tok int64
		require.NoError(t, rows.Scan(&tok))
		tokens = append(tokens, tok)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []int64{b.Token}, tokens, "exactly one completion, by the current token")
	done, err := e.client.Completed(ctx, a.ID)
	require.NoError(t, err)
	require.True(t, done)
}

func TestCompleteManyReportsLost(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	enqueueN(t, e.client, "bulk", 5)
	got, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "bulk", Limit: 5, Lease: time.Minute})
	require.NoError(t, err)
	require.Len(t, got, 5)
	refs := make([]queue.Ref, len(got))
	for i := range got {
		refs[i] = queue.RefOf(&got[i])
	}
	stale := queue.Ref{ID: refs[2].ID, Token: refs[2].Token + 1}
	lost, err := e.client.CompleteMany(ctx, []queue.Ref{refs[0], refs[1], stale, refs[3]})
	require.NoError(t, err)
	require.Equal(t, []queue.Ref{stale}, lost)
	lost, err = e.client.CompleteMany(ctx, []queue.Ref{refs[0], refs[1], refs[2]})
	require.NoError(t, err)
	require.Empty(t, lost, "repeats of completions and a fresh one all succeed")
	lost, err = e.client.CompleteMany(ctx, []queue.Ref{{ID: 987654321, Token: 1}})
	require.NoError(t, err)
	require.Len(t, lost, 1, "an unknown batch is not completed")
	require.Equal(t, 1, e.count("WHERE queue = 'bulk'"))
}

func TestRetryScheduleAndDeadLetter(t *testing.T) {
	t.Parallel()
	base, maxDelay := 10*time.Second, 30*time.Second
	e := newEnv(t, &queue.Config{RetryBase: base, RetryMax: maxDelay})
	ctx := testContext(t)
	res, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "retry", Meta: meta(1), MaxAttempts: 4})
	require.NoError(t, err)

	claim := func() queue.Ref {
		t.Helper()
		// Make it due now, whatever its schedule.
		e.exec("UPDATE "+e.q("batch")+" SET run_at = now() WHERE id = $1 AND state = 'available'", res.ID)
		got, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "retry", Limit: 1, Lease: time.Minute})
		require.NoError(t, err)
		require.Len(t, got, 1)
		return queue.RefOf(&got[0])
	}
	delay := func() time.Duration {
		t.Helper()
		var us int64
		require.NoError(t, e.pool.QueryRow(ctx,
			"SELECT (extract(epoch FROM run_at - now()) * 1e6)::int8 FROM "+e.q("batch")+" WHERE id = $1", res.ID).Scan(&us))
		return time.Duration(us) * time.Microsecond
	}

	// Attempt n waits base*2^(n-1), capped, times a jitter factor in [0.5, 1).
	windows := [][2]time.Duration{{base / 2, base}, {base, 2 * base}, {maxDelay / 2, maxDelay}}
	for attempt, w := range windows {
		ref := claim()
		dead, err := e.client.Fail(ctx, ref, errors.New("boom"))
		require.NoError(t, err)
		require.False(t, dead)
		d := delay()
		require.GreaterOrEqual(t, d, w[0]-time.Second, "attempt %d", attempt+1)
		require.LessOrEqual(t, d, w[1], "attempt %d", attempt+1)
		got, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "retry", Limit: 1, Lease: time.Minute})
		require.NoError(t, err)
		require.Empty(t, got, "a retry is not claimable before its time")
	}

	// The fourth attempt is the last: it dead-letters, keeping the error.
	ref := claim()
	dead, err := e.client.Fail(ctx, ref, errors.New("final \x00 failure"))
	require.NoError(t, err)
	require.True(t, dead)
	b, err := e.client.Get(ctx, res.ID)
	require.NoError(t, err)
	require.Equal(t, batch.StateDead, b.State)
	require.Equal(t, 4, b.Attempt)
	require.Equal(t, "final \uFFFD failure", b.LastError, "NUL cannot be stored; it is replaced")
	require.Zero(t, b.Lease.Token)

	deadList, err := e.client.ListDead(ctx, "retry", 0, 10)
	require.NoError(t, err)
	require.Len(t, deadList, 1)
	require.Equal(t, res.ID, deadList[0].ID)

	n, err := e.client.RequeueDead(ctx, "retry", []int64{res.ID, 424242})
	require.ErrorIs(t, err, queue.ErrNotFound, "all or nothing: 424242 is not dead")
	require.Zero(t, n)
	n, err = e.client.RequeueDead(ctx, "retry", []int64{res.ID})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	got, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "retry", Limit: 1, Lease: time.Minute})
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, 1, got[0].Attempt, "a requeued batch gets fresh attempts")
	deadList, err = e.client.ListDead(ctx, "retry", 0, 10)
	require.NoError(t, err)
	require.Empty(t, deadList)

	// Permanent errors dead-letter at once.
	dead, err = e.client.Fail(ctx, queue.RefOf(&got[0]), queue.Permanent(errors.New("malformed batch")))
	require.NoError(t, err)
	require.True(t, dead)
	n, err = e.client.RequeueAllDead(ctx, "retry")
	require.NoError(t, err)
	require.Equal(t, 1, n)
}

func TestReleaseKeepsAttemptsAndPlace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	ids := enqueueN(t, e.client, "rel", 3)
	got, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "rel", Limit: 1, Lease: time.Minute})
	require.NoError(t, err)
	require.Equal(t, ids[0], got[0].ID)
	require.NoError(t, e.client.Release(ctx, queue.RefOf(&got[0])))
	again, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "rel", Limit: 1, Lease: time.Minute})
	require.NoError(t, err)
	require.Equal(t, ids[0], again[0].ID, "a released batch keeps its place in line")
	require.Equal(t, 1, again[0].Attempt, "a release does not count the attempt")
}

func TestLastAttemptExpiryDeadLetters(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	res, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "crash", Meta: meta(1), MaxAttempts: 1})
	require.NoError(t, err)
	got, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "crash", Limit: 1, Lease: time.Second})
	require.NoError(t, err)
	require.Len(t, got, 1)
	waitFor(t, 10*time.Second, "the expired last attempt to be dead-lettered", func() bool {
		_, dead, err := e.client.ReclaimExpired(ctx, "")
		require.NoError(t, err)
		return dead == 1
	})
	b, err := e.client.Get(ctx, res.ID)
	require.NoError(t, err)
	require.Equal(t, batch.StateDead, b.State)
}

func TestClaimRejectsBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	enqueueN(t, e.client, "q", 1)
	for _, p := range []queue.ClaimParams{
		{Queue: "", Limit: 1, Lease: time.Minute},
		{Queue: "q", Limit: 0, Lease: time.Minute},
		{Queue: "q", Limit: -1, Lease: time.Minute},
		{Queue: "q", Limit: queue.MaxClaimSize + 1, Lease: time.Minute},
		{Queue: "q", Limit: 1, Lease: 0},
		{Queue: "q", Limit: 1, Lease: -time.Second},
		{Queue: "q", Limit: 1, Lease: queue.MaxLeaseDuration + 1},
	} {
		_, err := e.client.Claim(ctx, p)
		require.ErrorIs(t, err, queue.ErrInvalid, "%+v", p)
	}
	require.ErrorIs(t, e.client.Extend(ctx, queue.Ref{ID: 1, Token: 1}, 0), queue.ErrInvalid)
	require.Equal(t, 1, e.count("WHERE state = 'available' AND attempt = 0"), "rejected claims change nothing")
}
