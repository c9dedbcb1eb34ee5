package main

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/migrations"
)

func versions(from, to int) []int {
	var out []int
	for v := from; v <= to; v++ {
		out = append(out, v)
	}
	return out
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	d := newDB(t, false)
	latest := migrations.Latest()

	var st []migrateStatus
	d.runJSON(&st, "migrate", "status")
	require.Len(t, st, latest)
	for _, s := range st {
		require.False(t, s.Applied)
		require.True(t, s.Known)
	}

	r := d.run("migrate", "validate", "--json")
	require.Equal(t, exitCheck, r.code, "stderr: %s", r.stderr)
	require.Contains(t, r.stdout, `"ok": false`)
	require.Contains(t, r.stdout, "pending")

	var res migrateResult
	d.runJSON(&res, "migrate", "up")
	require.Equal(t, versions(1, latest), res.Applied)
	require.Equal(t, latest, res.Version)
	require.Equal(t, 1, d.tableCount("batch"))

	// Repeating up changes nothing.
	d.runJSON(&res, "migrate", "up")
	require.Empty(t, res.Applied)

	r = d.run("migrate", "validate")
	require.Equal(t, 0, r.code, "stderr: %s", r.stderr)
	require.Contains(t, r.stdout, "the latest")

	d.runJSON(&st, "migrate", "status")
	for _, s := range st {
		require.True(t, s.Applied, "version %d", s.Version)
		require.NotNil(t, s.AppliedAt)
	}
	r = d.run("migrate", "status")
	require.Equal(t, 0, r.code)
	require.Regexp(t, `(?m)^VERSION\s+NAME\s+APPLIED\s+APPLIED AT\s+KNOWN$`, r.stdout)
	require.Regexp(t, `(?m)^1\s+batch\s+yes\s+`, r.stdout)

	// Down to 2 and validate again.
	d.runJSON(&res, "migrate", "down", "--to", "2")
	require.Equal(t, reverse(versions(3, latest)), res.Reverted)
	require.Equal(t, 2, res.Version)
	require.Equal(t, 0, d.tableCount("batch_key_digest"))
	var v migrateValidation
	r = d.run("migrate", "validate", "--json")
	require.Equal(t, exitCheck, r.code)
	require.NoError(t, jsonUnmarshal(r.stdout, &v))
	require.Equal(t, versions(3, latest), v.Pending)
	require.Equal(t, 2, v.Version)

	// --to is required and bounded; nothing changes.
	for _, args := range [][]string{{"migrate", "down"}, {"migrate", "down", "--to", "-1"}, {"migrate", "down", "--to", "99"}} {
		r = d.run(args...)
		require.Equal(t, exitUsage, r.code, "%v: %s", args, r.stderr)
	}
	require.Equal(t, 1, d.tableCount("batch"))

	d.runJSON(&res, "migrate", "down", "--to", "0")
	require.Equal(t, 0, d.tableCount("batch"))
	d.runJSON(&res, "migrate", "up")
	require.Equal(t, versions(1, latest), res.Applied)
}

func reverse(s []int) []int {
	out := make([]int, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

// tableCount says whether the test's schema has a table (1) or not (0).
func (d *db) tableCount(table string) int {
	d.t.Helper()
	var n int
	require.NoError(d.t, d.pool.QueryRow(testContext(d.t),
		"SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = $2", d.schema, table).Scan(&n))
	return n
}
