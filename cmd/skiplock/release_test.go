package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/queue"
)

func TestReleaseLeases(t *testing.T) {
	t.Parallel()
	d := newDB(t, true)
	ctx := testContext(t)
	ids := d.enqueue("rl", 5)
	gone, err := d.client.Claim(ctx, queue.ClaimParams{Queue: "rl", Limit: 3, Lease: time.Hour, Owner: "host-a/42"})
	require.NoError(t, err)
	require.Equal(t, ids[:3], batchIDs(gone))
	other, err := d.client.Claim(ctx, queue.ClaimParams{Queue: "rl", Limit: 1, Lease: time.Hour, Owner: "host-b/7"})
	require.NoError(t, err)
	require.Equal(t, ids[3:4], batchIDs(other))

	// One of the gone owner's batches is re-taken, under a new token, by a
	// worker of the same name while the release runs: the new claim's
	// transaction holds the row, the release reads the old token and waits
	// for the row, and must then leave the new lease alone.
	tx, err := d.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.Background()) }()
	var blocker int32
	require.NoError(t, tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&blocker))
	const newToken = 777
	_, err = tx.Exec(ctx, "UPDATE "+d.q("batch")+" SET lease_token = $2, attempt = attempt + 1 WHERE id = $1", ids[2], newToken)
	require.NoError(t, err)

	cmd, stdout, stderr := start(t, cliEnv("DATABASE_URL="+d.url),
		"--schema", d.schema, "--json", "release-leases", "--queue", "rl", "--owner", "host-a/42")
	pgtest.WaitFor(t, 30*time.Second, "release-leases to wait for the re-taken row", func() bool {
		var n int
		require.NoError(t, d.pool.QueryRow(ctx,
			"SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))", blocker).Scan(&n))
		return n > 0
	})
	require.NoError(t, tx.Commit(ctx))
	r := finish(t, cmd, stdout, stderr)
	require.Equal(t, 0, r.code, r.stderr)

	var res releaseResult
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &res))
	require.Equal(t, ids[:3], res.Held)
	require.Equal(t, ids[:2], res.Released)
	require.Empty(t, res.Dead)
	require.Equal(t, ids[2:3], res.Skipped)

	require.Equal(t, 2, d.count("WHERE id = ANY ($1) AND state = 'available' AND lease_token IS NULL", ids[:2]))
	require.Equal(t, 1, d.count("WHERE id = $1 AND state = 'running' AND lease_token = $2 AND lease_owner = 'host-a/42'", ids[2], newToken))
	require.Equal(t, 1, d.count("WHERE id = $1 AND state = 'running' AND lease_token = $2 AND lease_owner = 'host-b/7'", ids[3], other[0].Lease.Token))
	// Claimable at once.
	again, err := d.client.Claim(ctx, queue.ClaimParams{Queue: "rl", Limit: 10, Lease: time.Hour})
	require.NoError(t, err)
	require.ElementsMatch(t, []int64{ids[0], ids[1], ids[4]}, batchIDs(again))

	// Run again, the owner's new lease goes too (the operator says the
	// owner is gone); then nothing is left. Human lines.
	r = d.run("release-leases", "--queue", "rl", "--owner", "host-a/42")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, `owner "host-a/42" held 1 leases in queue "rl": 1 released, 0 dead-lettered`)
	require.Equal(t, 1, d.count("WHERE id = $1 AND state = 'available' AND lease_token IS NULL", ids[2]))
	r = d.run("release-leases", "--queue", "rl", "--owner", "host-a/42")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, `owner "host-a/42" held 0 leases`)

	for _, args := range [][]string{
		{"release-leases", "--queue", "rl"}, {"release-leases", "--owner", "host-a/42"},
		{"release-leases", "--queue", "rl", "--owner", strings.Repeat("o", queue.MaxOwnerBytes+1)},
		{"release-leases", "--queue", "rl\n", "--owner", "host-b/7"},
	} {
		r := d.run(args...)
		require.Equal(t, exitUsage, r.code, "%v: %s", args, r.stderr)
	}
	require.Equal(t, 1, d.count("WHERE id = $1 AND lease_token = $2", ids[3], other[0].Lease.Token))
}
