package main

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

var errTestFailure = errors.New("boom \x1b[31mred\x1b[0m")

func batchIDs(bs []batch.Batch) []int64 {
	out := make([]int64, len(bs))
	for i := range bs {
		out[i] = bs[i].ID
	}
	return out
}

func TestListAndShow(t *testing.T) {
	t.Parallel()
	d := newDB(t, true)
	ctx := testContext(t)
	ids := d.enqueue("q", 5)
	later, err := d.client.Enqueue(ctx, queue.EnqueueParams{Queue: "q", Meta: batch.Meta{URI: "s3://bucket/later"}, Delay: time.Hour})
	require.NoError(t, err)
	got, err := d.client.Claim(ctx, queue.ClaimParams{Queue: "q", Limit: 2, Lease: time.Minute, Owner: "worker-7"})
	require.NoError(t, err)
	_, err = d.client.Fail(ctx, queue.RefOf(&got[0]), queue.Permanent(errTestFailure))
	require.NoError(t, err)

	list := func(state string, extra ...string) []batch.Batch {
		t.Helper()
		var bs []batch.Batch
		d.runJSON(&bs, append([]string{"list", "--queue", "q", "--state", state}, extra...)...)
		return bs
	}
	require.Equal(t, ids[2:], batchIDs(list("available")))
	require.Equal(t, []int64{later.ID}, batchIDs(list("scheduled")))
	running := list("running")
	require.Equal(t, ids[1:2], batchIDs(running))
	require.Equal(t, "worker-7", running[0].Lease.Owner)
	require.Equal(t, ids[:1], batchIDs(list("dead")))
	require.Equal(t, ids[2:4], batchIDs(list("available", "--limit", "2")))
	require.Equal(t, ids[4:], batchIDs(list("available", "--after", strconv.FormatInt(ids[3], 10))))
	require.Empty(t, list("available", "--after", strconv.FormatInt(ids[4], 10)))

	r := d.run("list", "--queue", "q", "--state", "dead")
	require.Equal(t, 0, r.code, r.stderr)
	require.Regexp(t, `(?m)^ID\s+STATE\s+PRIORITY\s+ATTEMPT\s+RUN AT\s+OWNER\s+LEASE EXPIRES\s+URI\s+LAST ERROR$`, r.stdout)
	require.Contains(t, r.stdout, strconv.FormatInt(ids[0], 10))
	require.NotContains(t, r.stdout, "\x1b", "an escape sequence in a stored error reaches the terminal escaped")
	require.Contains(t, r.stdout, `\x1b[31mred`)

	r = d.run("list", "--queue", "q", "--state", "available", "--limit", "1")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stderr, "--after "+strconv.FormatInt(ids[2], 10))

	// show: every column of one batch, as Get reads it.
	want, err := d.client.Get(ctx, ids[1])
	require.NoError(t, err)
	var b batch.Batch
	d.runJSON(&b, "show", strconv.FormatInt(ids[1], 10))
	require.Equal(t, want.ID, b.ID)
	require.Equal(t, want.Lease.Token, b.Lease.Token)
	require.Equal(t, "worker-7", b.Lease.Owner)
	require.True(t, want.Lease.ExpiresAt.Equal(b.Lease.ExpiresAt))
	require.Equal(t, want.URI, b.URI)
	require.Equal(t, batch.StateRunning, b.State)
	require.Equal(t, 1, b.Attempt)
	r = d.run("show", strconv.FormatInt(ids[0], 10))
	require.Equal(t, 0, r.code, r.stderr)
	require.Regexp(t, `(?m)^state\s+dead$`, r.stdout)
	require.Regexp(t, `(?m)^last_error\s+boom \\x1b\[31mred`, r.stdout)

	// Not found: exit 3, with what is known.
	r = d.run("show", "999999")
	require.Equal(t, exitNotFound, r.code)
	require.Contains(t, r.stderr, "batch 999999 not found")
	require.NoError(t, d.client.Complete(ctx, queue.RefOf(&got[1])))
	r = d.run("show", strconv.FormatInt(ids[1], 10))
	require.Equal(t, exitNotFound, r.code)
	require.Contains(t, r.stderr, "completed")

	// Bad input: exit 2.
	for _, args := range [][]string{
		{"show", "abc"}, {"show", "-5"}, {"show"}, {"show", "1", "2"},
		{"list", "--state", "dead"}, {"list", "--queue", "q"}, {"list", "--queue", "q", "--state", "done"},
		{"list", "--queue", "q", "--state", "dead", "--limit", "0"},
		{"list", "--queue", "q", "--state", "dead", "--limit", "1001"},
	} {
		r := d.run(args...)
		require.Equal(t, exitUsage, r.code, "%v: %s", args, r.stderr)
		require.NotEmpty(t, r.stderr)
	}
}
