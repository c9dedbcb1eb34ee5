package skiplockprom_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/queue"
)

// TestMetricsThroughCommitLoss loses acknowledged enqueues for real: the
// replica is cut off from the primary's WAL, keyed batches are enqueued and
// acknowledged on the primary alone, the primary is killed and the replica
// promoted, and the endpoint moves to it. The client re-asserts what the new
// writer lacks, and the scrape shows it: the re-asserted enqueue counter
// equals the client's own figure and covers every lost batch, and the time
// without a writer covers the outage.
func TestMetricsThroughCommitLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a primary and a replica")
	}
	t.Parallel()
	ctx := testContext(t)
	rg := newRig(t, ctx, 4)
	primary, replica, proxy, client, url := rg.primary, rg.replica, rg.proxy, rg.client, rg.url

	enqueue := func(from, n int) {
		for i := from; i < from+n; i++ {
			res, err := client.Enqueue(ctx, queue.EnqueueParams{Queue: "loss", Meta: batch.Meta{
				URI:    "s3://loss/" + strconv.Itoa(i),
				Source: batch.Source{Topic: "loss", Start: int64(i) * 10, End: int64(i)*10 + 10}, EventCount: 10,
			}})
			require.NoError(t, err)
			require.False(t, res.Duplicate)
		}
	}
	const kept, lost = 40, 60
	enqueue(0, kept)
	old, promoted := newPool(t, primary.ConnString("postgres")), newPool(t, replica.ConnString("postgres"))
	var lsn string
	require.NoError(t, old.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn))
	pgtest.WaitFor(t, 30*time.Second, "the replica to catch up", func() bool {
		var ok bool
		require.NoError(t, promoted.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&ok))
		return ok
	})
	require.NoError(t, replica.CutReplication(ctx))
	enqueue(kept, lost) // acknowledged by the primary only
	old.Close()
	require.NoError(t, primary.Kill())
	require.NoError(t, replica.Promote(ctx))

	// The new writer really lacks the last enqueues; the endpoint still
	// reaches the dead primary, so the client cannot have re-asserted yet.
	tbl := pgx.Identifier{rigSchema, "batch"}.Sanitize()
	count := func() int {
		var n int
		require.NoError(t, promoted.QueryRow(ctx, "SELECT count(*) FROM "+tbl+" WHERE queue = 'loss'").Scan(&n))
		return n
	}
	require.Equal(t, kept, count(), "the promoted replica lacks the enqueues acknowledged after the cut")
	before := scrapeOnce(t, url)
	requireCounter(t, before, "skiplock_reasserted_enqueues_total", 0)

	proxy.SetTarget(rigAddr(replica))
	pgtest.WaitFor(t, 30*time.Second, "the lost enqueues re-asserted", func() bool {
		js := client.JournalStats()
		return js.Pending == 0 && js.Reasserted >= lost
	})
	require.Equal(t, kept+lost, count(), "every acknowledged enqueue is on the new writer")

	js := client.JournalStats()
	var s scrape
	pgtest.WaitFor(t, 10*time.Second, "the re-assertion event counted", func() bool {
		s = scrapeOnce(t, url)
		v, _ := s.value("skiplock_reasserted_enqueues_total")
		return v == float64(js.Reasserted)
	})
	require.GreaterOrEqual(t, s.must(t, "skiplock_reasserted_enqueues_total"), float64(lost))
	require.GreaterOrEqual(t, s.must(t, "skiplock_pool_rebuilds_total"), 1.0)
	require.Greater(t, s.must(t, "skiplock_pool_writerless_seconds_total"), 0.0)
	require.Equal(t, 1.0, s.must(t, "skiplock_writer_info", "server", "127.0.0.1:"+strconv.Itoa(replica.Port())))
	t.Logf("re-asserted enqueues %d (lost %d), without a writer %.3fs", js.Reasserted, lost, s.must(t, "skiplock_pool_writerless_seconds_total"))
}
