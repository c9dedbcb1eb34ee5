package main

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// dead enqueues n batches and dead-letters them.
func (d *db) dead(queueName string, n int) []int64 {
	d.t.Helper()
	ctx := testContext(d.t)
	ids := d.enqueue(queueName, n)
	got, err := d.client.Claim(ctx, queue.ClaimParams{Queue: queueName, Limit: n, Lease: time.Minute})
	require.NoError(d.t, err)
	require.Len(d.t, got, n)
	for i := range got {
		_, err := d.client.Fail(ctx, queue.RefOf(&got[i]), queue.Permanent(errTestFailure))
		require.NoError(d.t, err)
	}
	return ids
}

func strIDs(ids ...int64) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = strconv.FormatInt(id, 10)
	}
	return out
}

func TestDead(t *testing.T) {
	t.Parallel()
	d := newDB(t, true)
	dead := d.dead("dq", 4)
	live := d.enqueue("dq", 1)

	var bs []batch.Batch
	d.runJSON(&bs, "dead", "list", "--queue", "dq")
	require.Equal(t, dead, batchIDs(bs))
	require.Contains(t, bs[0].LastError, "boom")
	d.runJSON(&bs, "dead", "list", "--queue", "dq", "--after", strconv.FormatInt(dead[1], 10), "--limit", "1")
	require.Equal(t, dead[2:3], batchIDs(bs))

	// Requeue: all or nothing.
	r := d.run(append([]string{"dead", "requeue", "--queue", "dq"}, strIDs(dead[0], live[0])...)...)
	require.Equal(t, exitNotFound, r.code, r.stderr)
	require.Contains(t, r.stderr, strconv.FormatInt(live[0], 10))
	require.Contains(t, r.stderr, "nothing requeued")
	require.Equal(t, 4, d.count("WHERE state = 'dead'"))

	var out map[string]any
	d.runJSON(&out, append([]string{"dead", "requeue", "--queue", "dq"}, strIDs(dead[0])...)...)
	require.EqualValues(t, 1, out["requeued"])
	require.Equal(t, 1, d.count("WHERE id = $1 AND state = 'available' AND attempt = 0", dead[0]))

	// Delete: all or nothing, too.
	r = d.run(append([]string{"dead", "delete", "--queue", "dq"}, strIDs(dead[1], dead[0])...)...)
	require.Equal(t, exitNotFound, r.code, r.stderr)
	require.Contains(t, r.stderr, "nothing deleted")
	require.Equal(t, 3, d.count("WHERE state = 'dead'"))
	r = d.run(append([]string{"dead", "delete", "--queue", "dq"}, strIDs(dead[1])...)...)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "deleted 1 dead batches")
	require.Equal(t, 0, d.count("WHERE id = $1", dead[1]))

	d.runJSON(&out, "dead", "requeue-all", "--queue", "dq")
	require.EqualValues(t, 2, out["requeued"])
	require.Equal(t, 0, d.count("WHERE state = 'dead'"))
	require.Equal(t, 4, d.count("WHERE state = 'available'"))

	for _, args := range [][]string{
		{"dead", "requeue", "1"}, {"dead", "requeue", "--queue", "dq"}, {"dead", "delete", "--queue", "dq", "x"},
		{"dead", "requeue-all"}, {"dead", "list"}, {"dead", "bury", "--queue", "dq"},
	} {
		r := d.run(args...)
		require.Equal(t, exitUsage, r.code, "%v: %s", args, r.stderr)
	}
	require.Equal(t, 4, d.count("WHERE state = 'available'"))
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	d := newDB(t, true)
	ctx := testContext(t)
	var out map[string]any
	d.runJSON(&out, "pause", "p")
	require.Equal(t, true, out["paused"])
	paused, err := d.client.Paused(ctx, "p")
	require.NoError(t, err)
	require.True(t, paused)

	r := d.run("resume", "p")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, `queue "p" resumed`)
	paused, err = d.client.Paused(ctx, "p")
	require.NoError(t, err)
	require.False(t, paused)

	for _, args := range [][]string{{"pause"}, {"pause", "a", "b"}, {"resume", ""}} {
		r := d.run(args...)
		require.Equal(t, exitUsage, r.code, "%v: %s", args, r.stderr)
	}
}
