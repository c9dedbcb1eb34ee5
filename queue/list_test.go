package queue_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

func batchIDs(bs []batch.Batch) []int64 {
	out := make([]int64, len(bs))
	for i := range bs {
		out[i] = bs[i].ID
	}
	return out
}

func TestList(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	all := enqueueN(t, e.client, "l", 6)
	later, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "l", Meta: meta(7), Delay: time.Hour})
	require.NoError(t, err)
	enqueueN(t, e.client, "other", 2)

	got, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "l", Limit: 2, Lease: time.Minute, Owner: "w1"})
	require.NoError(t, err)
	require.Equal(t, all[:2], batchIDs(got))
	_, err = e.client.Fail(ctx, queue.RefOf(&got[0]), queue.Permanent(errTest))
	require.NoError(t, err)

	list := func(state queue.ListState, after int64, limit int) []batch.Batch {
		t.Helper()
		bs, err := e.client.List(ctx, "l", state, after, limit)
		require.NoError(t, err)
		return bs
	}
	require.Equal(t, all[2:], batchIDs(list(queue.ListAvailable, 0, 100)))
	require.Equal(t, []int64{later.ID}, batchIDs(list(queue.ListScheduled, 0, 100)))
	running := list(queue.ListRunning, 0, 100)
	require.Equal(t, []int64{all[1]}, batchIDs(running))
	require.Equal(t, "w1", running[0].Lease.Owner)
	require.NotZero(t, running[0].Lease.Token)
	dead := list(queue.ListDead, 0, 100)
	require.Equal(t, []int64{all[0]}, batchIDs(dead))
	require.Equal(t, batch.StateDead, dead[0].State)
	require.Contains(t, dead[0].LastError, errTest.Error())

	// Paging by id.
	page := list(queue.ListAvailable, 0, 3)
	require.Equal(t, all[2:5], batchIDs(page))
	require.Equal(t, all[5:], batchIDs(list(queue.ListAvailable, page[2].ID, 3)))
	require.Empty(t, list(queue.ListAvailable, all[5], 3))
}

func TestListBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	for _, tc := range []struct {
		name, queue string
		state       queue.ListState
		limit       int
		field       string
	}{
		{"empty queue", "", queue.ListDead, 10, "queue"},
		{"control character", "a\x1b[2Jb", queue.ListDead, 10, "queue"},
		{"unknown state", "q", "completed", 10, "state"},
		{"sql in state", "q", "dead' OR true --", 10, "state"},
		{"zero limit", "q", queue.ListDead, 0, "limit"},
		{"limit too high", "q", queue.ListDead, queue.MaxListLimit + 1, "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client.List(ctx, tc.queue, tc.state, 0, tc.limit)
			require.ErrorIs(t, err, queue.ErrInvalid)
			var ae *queue.ArgumentError
			require.ErrorAs(t, err, &ae)
			require.Equal(t, tc.field, ae.Field)
		})
	}
}
