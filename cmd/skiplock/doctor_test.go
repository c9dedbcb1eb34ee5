package main

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/internal/pgtest"
)

// doctorRun runs doctor with --json against url and decodes its report.
func doctorRun(t *testing.T, url, schema string, args ...string) (doctorReport, result) {
	t.Helper()
	r := runEnv(t, cliEnv("DATABASE_URL="+url), append([]string{"--schema", schema, "--json", "doctor"}, args...)...)
	var rep doctorReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep), "stdout: %s stderr: %s", r.stdout, r.stderr)
	return rep, r
}

// findings returns the report's findings of one check.
func findings(rep doctorReport, check string) []finding {
	var out []finding
	for _, f := range rep.Findings {
		if f.Check == check {
			out = append(out, f)
		}
	}
	return out
}

func only(t *testing.T, rep doctorReport, check string) finding {
	t.Helper()
	fs := findings(rep, check)
	require.Len(t, fs, 1, "findings of %s in %+v", check, rep.Findings)
	return fs[0]
}

// TestDoctor runs doctor against its own server, one case after another:
// each case changes what the server-wide checks see.
func TestDoctor(t *testing.T) {
	srv := pgtest.NewPrimary(t, nil)
	url := srv.ConnString("postgres")
	d := newDBOn(t, url, true)
	ctx := testContext(t)

	t.Run("clean", func(t *testing.T) {
		rep, r := doctorRun(t, url, d.schema)
		require.Equal(t, 0, r.code, r.stderr)
		require.Zero(t, rep.Critical, "%+v", rep.Findings)
		for _, check := range []string{"writer", "pooler", "migrations", "hot-table", "oldest-transaction",
			"prepared-transactions", "replication-slots", "replication-lag",
			"retention:batch_key_digest", "retention:batch_key", "retention:batch_done"} {
			f := only(t, rep, check)
			require.Equal(t, sevOK, f.Severity, "%s: %s", check, f.Summary)
		}
		require.Contains(t, only(t, rep, "writer").Summary, fmt.Sprintf("writer 127.0.0.1:%d", srv.Port()))

		h := runEnv(t, cliEnv("DATABASE_URL="+url), "--schema", d.schema, "doctor")
		require.Equal(t, 0, h.code, h.stderr)
		require.Regexp(t, `(?m)^SEVERITY\s+CHECK\s+FINDING\s+WHAT TO DO$`, h.stdout)
		require.Contains(t, h.stdout, "0 critical")
	})

	t.Run("long transaction", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, url)
		require.NoError(t, err)
		defer conn.Close(context.Background())
		tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(context.Background()) }()
		var pid int32
		require.NoError(t, tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid))
		var n int
		require.NoError(t, tx.QueryRow(ctx, "SELECT count(*) FROM "+d.q("batch")).Scan(&n)) // the snapshot is taken

		rep, r := doctorRun(t, url, d.schema, "--xact-age-warn", "1ms")
		require.Equal(t, 0, r.code, r.stderr)
		f := only(t, rep, "oldest-transaction")
		require.Equal(t, sevWarn, f.Severity, f.Summary)
		require.EqualValues(t, pid, f.Details["pid"])
		require.Contains(t, f.Action, fmt.Sprintf("pg_terminate_backend(%d)", pid))

		rep, r = doctorRun(t, url, d.schema, "--xact-age-warn", "1ms", "--xact-age-critical", "2ms")
		require.Equal(t, exitCheck, r.code, r.stderr)
		f = only(t, rep, "oldest-transaction")
		require.Equal(t, sevCritical, f.Severity)
		require.EqualValues(t, pid, f.Details["pid"])
		require.Equal(t, 1, rep.Critical)

		require.NoError(t, tx.Rollback(ctx))
		rep, r = doctorRun(t, url, d.schema, "--xact-age-warn", "1h")
		require.Equal(t, 0, r.code, r.stderr)
		require.NotEqualValues(t, pid, only(t, rep, "oldest-transaction").Details["pid"])
	})

	t.Run("bloated hot table", func(t *testing.T) {
		const rows = 3000
		d.exec("ALTER TABLE " + d.q("batch") + " SET (autovacuum_enabled = false)")
		d.exec("INSERT INTO "+d.q("batch")+" (queue, max_attempts) SELECT 'bloat', 10 FROM generate_series(1, $1)", rows)
		d.exec("UPDATE " + d.q("batch") + " SET priority = 1 WHERE queue = 'bloat'")
		d.exec("DELETE FROM " + d.q("batch") + " WHERE queue = 'bloat'")
		pgtest.WaitFor(t, 30*time.Second, "dead tuples in the statistics", func() bool {
			var dead int64
			require.NoError(t, d.pool.QueryRow(ctx, "SELECT coalesce(n_dead_tup, 0) FROM pg_stat_user_tables WHERE relid = $1::regclass",
				d.q("batch")).Scan(&dead))
			return dead >= 2*rows
		})

		rep, r := doctorRun(t, url, d.schema, "--dead-tuples-warn", "5000")
		require.Equal(t, 0, r.code, r.stderr)
		f := only(t, rep, "hot-table")
		require.Equal(t, sevWarn, f.Severity, f.Summary)
		require.GreaterOrEqual(t, f.Details["n_dead_tup"], float64(2*rows))
		require.Contains(t, f.Action, "VACUUM")
		av := only(t, rep, "autovacuum")
		require.Equal(t, sevWarn, av.Severity)
		require.Contains(t, av.Summary, "autovacuum_enabled=false")

		rep, r = doctorRun(t, url, d.schema, "--dead-tuples-warn", "1000", "--dead-tuples-critical", "5000")
		require.Equal(t, exitCheck, r.code, r.stderr)
		require.Equal(t, sevCritical, only(t, rep, "hot-table").Severity)

		// After a vacuum the same thresholds find nothing.
		d.exec("VACUUM " + d.q("batch"))
		pgtest.WaitFor(t, 30*time.Second, "the vacuum in the statistics", func() bool {
			rep, _ := doctorRun(t, url, d.schema, "--dead-tuples-warn", "5000")
			return only(t, rep, "hot-table").Severity == sevOK
		})
		d.exec("ALTER TABLE " + d.q("batch") + " RESET (autovacuum_enabled)")
	})

	t.Run("replica endpoint", func(t *testing.T) {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		replica, err := srv.StartReplica(rctx, nil)
		require.NoError(t, err)
		t.Cleanup(func() { _ = replica.Close() })

		rep, r := doctorRun(t, replica.ConnString("postgres"), d.schema)
		require.Equal(t, exitCheck, r.code, r.stderr)
		f := only(t, rep, "writer")
		require.Equal(t, sevCritical, f.Severity)
		require.Contains(t, f.Summary, "standby")
		require.Contains(t, f.Summary, fmt.Sprintf("127.0.0.1:%d", replica.Port()))
		require.NotEmpty(t, f.Action)

		// The primary sees its replica.
		pgtest.WaitFor(t, 30*time.Second, "the replica in pg_stat_replication", func() bool {
			rep, _ := doctorRun(t, url, d.schema)
			fs := findings(rep, "replication-lag")
			return len(fs) == 1 && fs[0].Details["state"] == "streaming"
		})
		rep, r = doctorRun(t, url, d.schema)
		require.Equal(t, 0, r.code, r.stderr)
		require.Contains(t, only(t, rep, "replication-lag").Summary, "replica")
	})
}
