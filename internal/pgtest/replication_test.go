package pgtest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// longCtx returns a context for tests that chain many server operations on a noisy machine.
func longCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// countValue counts the rows of t whose v is value, on a new connection.
func countValue(t *testing.T, s *Server, value string) int64 {
	t.Helper()
	n, err := queryInt(testCtx(t), s.ConnString(""), "SELECT count(*) FROM t WHERE v = $1", value)
	require.NoError(t, err)
	return n
}

// waitValue waits until a row of t on s has v = value.
func waitValue(t *testing.T, s *Server, value string) {
	t.Helper()
	waitUntil(t, 30*time.Second, value+" on "+s.Name(), func() error {
		n, err := queryInt(testCtx(t), s.ConnString(""), "SELECT count(*) FROM t WHERE v = $1", value)
		if err == nil && n != 1 {
			return errNotYet
		}
		return err
	})
}

// lsnBefore reports whether WAL position a is before b.
func lsnBefore(t *testing.T, s *Server, a, b string) bool {
	t.Helper()
	n, err := queryInt(testCtx(t), s.ConnString(""), "SELECT CASE WHEN $1::pg_lsn < $2::pg_lsn THEN 1 ELSE 0 END", a, b)
	require.NoError(t, err)
	return n == 1
}

// received returns the standby's last received WAL position, or "" if it received none since
// it started.
func received(t *testing.T, s *Server) string {
	t.Helper()
	var lsn *string
	require.NoError(t, connect(t, s.ConnString("")).QueryRow(testCtx(t), "SELECT pg_last_wal_receive_lsn()::text").Scan(&lsn))
	if lsn == nil {
		return ""
	}
	return *lsn
}

func TestCutAndResumeReplication(t *testing.T) {
	t.Parallel()
	primary, standby := NewPair(t, nil)
	logOnFailure(t, primary, standby)
	ctx := longCtx(t)
	execSQL(t, primary.ConnString(""), "CREATE TABLE t (v text); INSERT INTO t VALUES ('before')")
	waitValue(t, standby, "before")

	require.NoError(t, standby.CutReplication(ctx))
	require.NoError(t, standby.CutReplication(ctx), "cutting twice is fine")
	execSQL(t, primary.ConnString(""), "INSERT INTO t VALUES ('while cut')")
	flushed, err := primary.WALPosition(ctx)
	require.NoError(t, err)
	recv := received(t, standby)
	require.True(t, recv == "" || lsnBefore(t, primary, recv, flushed),
		"the standby received WAL up to %s, the commit is at %s", recv, flushed)
	require.Zero(t, countValue(t, standby, "while cut"))

	// The cut survives a restart of the standby.
	require.NoError(t, standby.Restart(ctx))
	execSQL(t, primary.ConnString(""), "INSERT INTO t VALUES ('after restart')")
	flushed, err = primary.WALPosition(ctx)
	require.NoError(t, err)
	recv = received(t, standby)
	require.True(t, recv == "" || lsnBefore(t, primary, recv, flushed),
		"the restarted standby received WAL up to %s, the commit is at %s", recv, flushed)
	in, err := standby.InRecovery(ctx)
	require.NoError(t, err)
	require.True(t, in)

	// Resumed, the standby has everything at once.
	start := time.Now()
	require.NoError(t, standby.ResumeReplication(ctx, primary))
	t.Logf("ResumeReplication took %v", time.Since(start).Round(time.Millisecond))
	require.EqualValues(t, 1, countValue(t, standby, "while cut"))
	require.EqualValues(t, 1, countValue(t, standby, "after restart"))
	pos, err := standby.WALPosition(ctx)
	require.NoError(t, err)
	require.False(t, lsnBefore(t, primary, pos, flushed), "replayed %s, primary flushed %s", pos, flushed)
	execSQL(t, primary.ConnString(""), "INSERT INTO t VALUES ('resumed')")
	waitValue(t, standby, "resumed")

	// A cut standby can also be made to follow again with DemoteToStandby (nothing to rewind).
	require.NoError(t, standby.CutReplication(ctx))
	execSQL(t, primary.ConnString(""), "INSERT INTO t VALUES ('cut again')")
	require.NoError(t, standby.DemoteToStandby(ctx, primary))
	require.EqualValues(t, 1, countValue(t, standby, "cut again"))

	// Only a standby has replication to cut or resume.
	require.ErrorIs(t, primary.CutReplication(ctx), ErrNotStandby)
	require.ErrorIs(t, primary.ResumeReplication(ctx, standby), ErrNotStandby)
	require.Error(t, standby.ResumeReplication(ctx, standby))
}

// TestCommitLossRounds is the sequence a chaos test repeats: the standby is cut off, the
// primary acknowledges commits, crashes, the standby is promoted without those commits, and the
// crashed primary is rewound into a standby of the new one; then the same the other way round.
func TestCommitLossRounds(t *testing.T) {
	t.Parallel()
	primary, standby := NewPair(t, nil)
	logOnFailure(t, primary, standby)
	ctx := longCtx(t)
	execSQL(t, primary.ConnString(""), "CREATE TABLE t (v text PRIMARY KEY)")
	const rounds = 3
	steps := []string{"cut", "kill", "promote", "demote"}
	took := map[string][]time.Duration{}
	timed := func(step string, f func() error) {
		t.Helper()
		start := time.Now()
		require.NoError(t, f(), step)
		took[step] = append(took[step], time.Since(start))
	}

	for round := 1; round <= rounds; round++ {
		kept, lost := fmt.Sprintf("kept-%d", round), fmt.Sprintf("lost-%d", round)
		after, streamed := fmt.Sprintf("after-%d", round), fmt.Sprintf("streamed-%d", round)
		execSQL(t, primary.ConnString(""), "INSERT INTO t VALUES ($1)", kept)
		waitValue(t, standby, kept)

		timed("cut", func() error { return standby.CutReplication(ctx) })
		// Acknowledged commits the standby never receives.
		for i := range 5 {
			execSQL(t, primary.ConnString(""), "INSERT INTO t VALUES ($1)", fmt.Sprintf("%s.%d", lost, i))
		}
		execSQL(t, primary.ConnString(""), "INSERT INTO t VALUES ($1)", lost)
		flushed, err := primary.WALPosition(ctx)
		require.NoError(t, err)
		replayed, err := standby.WALPosition(ctx)
		require.NoError(t, err)
		require.True(t, lsnBefore(t, primary, replayed, flushed), "round %d: standby replayed %s, primary flushed %s", round, replayed, flushed)
		timed("kill", primary.Kill)
		timed("promote", func() error { return standby.Promote(ctx) })

		// Real commit loss: the new primary has what it had received, not the later commits.
		require.EqualValues(t, 1, countValue(t, standby, kept), "round %d", round)
		require.Zero(t, countValue(t, standby, lost), "round %d: the acknowledged commit must be lost", round)
		n, err := queryInt(ctx, standby.ConnString(""), "SELECT count(*) FROM t WHERE v LIKE $1", lost+".%")
		require.NoError(t, err)
		require.Zero(t, n, "round %d", round)
		execSQL(t, standby.ConnString(""), "INSERT INTO t VALUES ($1)", after)

		timed("demote", func() error { return primary.DemoteToStandby(ctx, standby) })
		in, err := primary.InRecovery(ctx)
		require.NoError(t, err)
		require.True(t, in, "round %d: the old primary must be a standby", round)
		var sender int32
		require.NoError(t, connect(t, primary.ConnString("")).QueryRow(ctx,
			"SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'").Scan(&sender))
		require.EqualValues(t, standby.Port(), sender, "round %d: streaming from the new primary", round)
		require.Zero(t, countValue(t, primary, lost), "round %d: the lost commit must be rewound", round)
		require.EqualValues(t, 1, countValue(t, primary, after), "round %d", round)
		execSQL(t, standby.ConnString(""), "INSERT INTO t VALUES ($1)", streamed)
		waitValue(t, primary, streamed)

		primary, standby = standby, primary
	}

	// Every round kept 3 rows (kept, after, streamed) and lost 6.
	n, err := queryInt(ctx, primary.ConnString(""), "SELECT count(*) FROM t")
	require.NoError(t, err)
	require.EqualValues(t, 3*rounds, n)

	var b strings.Builder
	for _, step := range steps {
		d := slices.Clone(took[step])
		slices.Sort(d)
		fmt.Fprintf(&b, " %s median %v (%v);", step, d[len(d)/2].Round(time.Millisecond), roundAll(took[step]))
	}
	t.Logf("step durations over %d rounds:%s", rounds, b.String())
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

func TestReplicateThroughProxy(t *testing.T) {
	t.Parallel()
	primary, standby := NewPair(t, nil)
	logOnFailure(t, primary, standby)
	ctx := longCtx(t)
	p := NewTestProxy(t, fmt.Sprintf("%s:%d", primary.Host(), primary.Port()))
	execSQL(t, primary.ConnString(""), "CREATE TABLE t (v text)")

	require.NoError(t, standby.ReplicateThrough(ctx, primary, p))
	require.EqualValues(t, 1, p.Conns(), "the WAL receiver connects through the proxy")
	execSQL(t, primary.ConnString(""), "INSERT INTO t VALUES ('through')")
	waitValue(t, standby, "through")

	// Held by the proxy, commits do not reach the standby; released, they do.
	p.Blackhole(true)
	execSQL(t, primary.ConnString(""), "INSERT INTO t VALUES ('held')")
	flushed, err := primary.WALPosition(ctx)
	require.NoError(t, err)
	recv := received(t, standby)
	require.True(t, lsnBefore(t, primary, recv, flushed), "received %s while held, commit at %s", recv, flushed)
	require.Zero(t, countValue(t, standby, "held"))
	p.Blackhole(false)
	waitValue(t, standby, "held")

	// Held again, a crash of the primary and a promotion lose the held commit.
	p.Blackhole(true)
	execSQL(t, primary.ConnString(""), "INSERT INTO t VALUES ('lost')")
	require.NoError(t, primary.Kill())
	require.NoError(t, standby.Promote(ctx))
	require.Zero(t, countValue(t, standby, "lost"))
	require.EqualValues(t, 1, countValue(t, standby, "held"))
	p.Blackhole(false)

	// The crashed primary follows the new one directly again.
	require.NoError(t, primary.DemoteToStandby(ctx, standby))
	require.Zero(t, countValue(t, primary, "lost"))
}
