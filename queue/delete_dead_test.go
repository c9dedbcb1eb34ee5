package queue_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/queue"
)

// deadN enqueues n batches in a queue and dead-letters them.
func deadN(t *testing.T, e *env, queueName string, n int) []int64 {
	t.Helper()
	ctx := testContext(t)
	want := enqueueN(t, e.client, queueName, n)
	got, err := e.client.Claim(ctx, queue.ClaimParams{Queue: queueName, Limit: n, Lease: time.Minute})
	require.NoError(t, err)
	require.Len(t, got, n)
	for i := range got {
		dead, err := e.client.Fail(ctx, queue.RefOf(&got[i]), queue.Permanent(errTest))
		require.NoError(t, err)
		require.True(t, dead)
	}
	return want
}

func TestDeleteDead(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	dead := deadN(t, e, "d", 3)
	otherDead := deadN(t, e, "d2", 1)
	live := enqueueN(t, e.client, "d", 1)

	// All or nothing: a live batch, another queue's dead batch or an
	// unknown id deletes nothing and is named.
	for _, bad := range []int64{live[0], otherDead[0], 999999} {
		n, err := e.client.DeleteDead(ctx, "d", []int64{dead[0], bad})
		require.ErrorIs(t, err, queue.ErrNotFound)
		require.Contains(t, err.Error(), "nothing deleted")
		require.Contains(t, err.Error(), strconv.FormatInt(bad, 10))
		require.Zero(t, n)
		require.Equal(t, 3, e.count("WHERE queue = 'd' AND state = 'dead'"))
	}

	n, err := e.client.DeleteDead(ctx, "d", []int64{dead[0], dead[1], dead[0]})
	require.NoError(t, err)
	require.Equal(t, 2, n)
	require.Equal(t, 0, e.count("WHERE id = ANY ($1)", dead[:2]))
	require.Equal(t, 1, e.count("WHERE id = $1 AND state = 'dead'", dead[2]))
	require.Equal(t, 1, e.count("WHERE id = $1", otherDead[0]))

	n, err = e.client.DeleteDead(ctx, "d", nil)
	require.NoError(t, err)
	require.Zero(t, n)

	// In a transaction: gone only when it commits.
	tx, err := e.pool.Begin(ctx)
	require.NoError(t, err)
	n, err = e.client.DeleteDeadTx(ctx, tx, "d", []int64{dead[2]})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.NoError(t, tx.Rollback(ctx))
	require.Equal(t, 1, e.count("WHERE id = $1", dead[2]))

	_, err = e.client.DeleteDeadTx(ctx, nil, "d", []int64{dead[2]})
	require.ErrorIs(t, err, queue.ErrInvalid)
	_, err = e.client.DeleteDead(ctx, "d\x00'; DELETE FROM batch; --", []int64{dead[2]})
	require.ErrorIs(t, err, queue.ErrInvalid)
	require.Equal(t, 1, e.count("WHERE id = $1", dead[2]))
}
