package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

func TestStats(t *testing.T) {
	t.Parallel()
	d := newDB(t, true)
	ctx := testContext(t)
	d.enqueue("a", 5)
	d.enqueue("b", 2)
	_, err := d.client.Enqueue(ctx, queue.EnqueueParams{Queue: "a", Meta: batch.Meta{URI: "s3://bucket/later"}, Delay: time.Hour})
	require.NoError(t, err)
	got, err := d.client.Claim(ctx, queue.ClaimParams{Queue: "a", Limit: 2, Lease: time.Minute})
	require.NoError(t, err)
	_, err = d.client.Fail(ctx, queue.RefOf(&got[0]), queue.Permanent(errTestFailure))
	require.NoError(t, err)
	d.exec("UPDATE " + d.q("batch") + " SET lease_expires_at = now() - interval '1 second' WHERE state = 'running'")
	d.exec("UPDATE " + d.q("batch") + " SET run_at = now() - interval '1 hour' WHERE queue = 'b'")
	require.NoError(t, d.client.Pause(ctx, "c"))

	var rows []statsRow
	d.runJSON(&rows, "stats")

	// What SQL says, counted here independently.
	want := map[string]statsRow{}
	r, err := d.pool.Query(ctx, `SELECT queue,
    count(*) FILTER (WHERE state = 'available' AND run_at <= now()),
    count(*) FILTER (WHERE state = 'available' AND run_at > now()),
    count(*) FILTER (WHERE state = 'running'),
    count(*) FILTER (WHERE state = 'running' AND lease_expires_at < now()),
    count(*) FILTER (WHERE state = 'dead'),
    coalesce(extract(epoch FROM now() - min(run_at) FILTER (WHERE state = 'available' AND run_at <= now())), 0)::float8
FROM `+d.q("batch")+` GROUP BY queue`)
	require.NoError(t, err)
	for r.Next() {
		var s statsRow
		require.NoError(t, r.Scan(&s.Queue, &s.Available, &s.Scheduled, &s.Running, &s.ExpiredLeases, &s.Dead, &s.OldestAgeSeconds))
		want[s.Queue] = s
	}
	require.NoError(t, r.Err())
	want["c"] = statsRow{Queue: "c", Paused: true}

	require.Len(t, rows, 3)
	for _, got := range rows {
		w, ok := want[got.Queue]
		require.True(t, ok, got.Queue)
		require.InDelta(t, w.OldestAgeSeconds, got.OldestAgeSeconds, 30, got.Queue)
		got.OldestAgeSeconds, w.OldestAgeSeconds = 0, 0
		require.Equal(t, w, got)
	}
	require.EqualValues(t, 3, want["a"].Available)
	require.EqualValues(t, 1, want["a"].Scheduled)
	require.EqualValues(t, 1, want["a"].ExpiredLeases)
	require.EqualValues(t, 1, want["a"].Dead)

	var one []statsRow
	d.runJSON(&one, "stats", "b")
	require.Len(t, one, 1)
	require.Equal(t, "b", one[0].Queue)
	require.GreaterOrEqual(t, one[0].OldestAgeSeconds, 3599.0)

	res := d.run("stats")
	require.Equal(t, 0, res.code, res.stderr)
	require.Regexp(t, `(?m)^QUEUE\s+AVAILABLE\s+SCHEDULED\s+RUNNING\s+EXPIRED LEASES\s+DEAD\s+OLDEST\s+PAUSED$`, res.stdout)
	require.Regexp(t, `(?m)^a\s+3\s+1\s+1\s+1\s+1\s+\S+\s+no$`, res.stdout)
	require.Regexp(t, `(?m)^c\s+0\s+0\s+0\s+0\s+0\s+0s\s+yes$`, res.stdout)
}
