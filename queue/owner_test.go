package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/queue"
)

func TestReleaseOwner(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	all := enqueueN(t, e.client, "r", 4)
	gone, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "r", Limit: 3, Lease: time.Hour, Owner: "gone/1"})
	require.NoError(t, err)
	require.Equal(t, all[:3], batchIDs(gone))
	alive, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "r", Limit: 1, Lease: time.Hour, Owner: "alive/2"})
	require.NoError(t, err)
	require.Len(t, alive, 1)
	// The third batch was on its last attempt.
	e.exec("UPDATE "+e.q("batch")+" SET max_attempts = 1 WHERE id = $1", all[2])

	res, err := e.client.ReleaseOwner(ctx, "r", "gone/1")
	require.NoError(t, err)
	require.Equal(t, all[:3], res.Held)
	require.Equal(t, all[:2], res.Released)
	require.Equal(t, all[2:3], res.Dead)
	require.Empty(t, res.Skipped())

	require.Equal(t, 2, e.count("WHERE id = ANY ($1) AND state = 'available' AND lease_token IS NULL AND attempt = 1 AND last_error LIKE '%gone/1 released%'", all[:2]))
	require.Equal(t, 1, e.count("WHERE id = $1 AND state = 'dead'", all[2]))
	// The other owner's lease is untouched.
	require.Equal(t, 1, e.count("WHERE id = $1 AND state = 'running' AND lease_token = $2 AND lease_owner = 'alive/2'", alive[0].ID, alive[0].Lease.Token))
	// Released batches are claimable at once; their old tokens are fenced.
	again, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "r", Limit: 10, Lease: time.Hour, Owner: "new/3"})
	require.NoError(t, err)
	require.Equal(t, all[:2], batchIDs(again))
	require.ErrorIs(t, e.client.Complete(ctx, queue.RefOf(&gone[0])), queue.ErrLeaseLost)

	// Nothing held: nothing to do.
	res, err = e.client.ReleaseOwner(ctx, "r", "gone/1")
	require.NoError(t, err)
	require.Empty(t, res.Held)

	for _, bad := range []struct{ queue, owner string }{
		{"r", ""}, {"r", "a\x00b"}, {"r", string([]byte{0xff})}, {"", "gone/1"}, {"r\n", "gone/1"},
	} {
		_, err := e.client.ReleaseOwner(ctx, bad.queue, bad.owner)
		require.ErrorIs(t, err, queue.ErrInvalid, "%q %q", bad.queue, bad.owner)
	}
}

// TestReleaseOwnerFencedByToken holds a new lease on one of the owner's
// batches uncommitted while ReleaseOwner runs: the release reads the old
// token, waits for the row, and must then leave the new lease alone — even
// though it is held under the same owner name (a worker restarted with the
// same name).
func TestReleaseOwnerFencedByToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	all := enqueueN(t, e.client, "f", 2)
	held, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "f", Limit: 2, Lease: time.Hour, Owner: "w"})
	require.NoError(t, err)
	require.Len(t, held, 2)

	tx, err := e.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.Background()) }()
	var blocker int32
	require.NoError(t, tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&blocker))
	const newToken = 4242
	_, err = tx.Exec(ctx, "UPDATE "+e.q("batch")+" SET lease_token = $2, attempt = attempt + 1 WHERE id = $1", all[1], newToken)
	require.NoError(t, err)

	type result struct {
		res *queue.OwnerRelease
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := e.client.ReleaseOwner(ctx, "f", "w")
		done <- result{res, err}
	}()
	waitFor(t, 30*time.Second, "the release to wait for the re-taken row", func() bool {
		var n int
		require.NoError(t, e.pool.QueryRow(ctx,
			"SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))", blocker).Scan(&n))
		return n > 0
	})
	require.NoError(t, tx.Commit(ctx))

	r := <-done
	require.NoError(t, r.err)
	require.Equal(t, all, r.res.Held)
	require.Equal(t, all[:1], r.res.Released)
	require.Empty(t, r.res.Dead)
	require.Equal(t, all[1:], r.res.Skipped())
	require.Equal(t, 1, e.count("WHERE id = $1 AND state = 'running' AND lease_token = $2 AND lease_owner = 'w'", all[1], newToken))
	require.Equal(t, 1, e.count("WHERE id = $1 AND state = 'available'", all[0]))
}
