package failover_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/failover"
)

func TestPoolConfig(t *testing.T) {
	_, err := failover.New(context.Background(), nil)
	require.ErrorIs(t, err, failover.ErrInvalidConfig)
	cfg, err := pgxpool.ParseConfig("postgres://u@127.0.0.1:1/db")
	require.NoError(t, err)
	_, err = failover.New(context.Background(), &failover.Config{PoolConfig: cfg, ProbeInterval: time.Microsecond})
	require.ErrorIs(t, err, failover.ErrInvalidConfig)

	// Nothing listens there: New gives up when ctx ends, with a typed error.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err = failover.New(ctx, &failover.Config{PoolConfig: cfg})
	var nw *failover.NoWriterError
	require.ErrorAs(t, err, &nw)
	require.NotContains(t, err.Error(), "password")
	require.GreaterOrEqual(t, nw.Waited, 400*time.Millisecond, "Waited must be the time spent")
}

// TestPoolFollowsWriter: the writer is demoted (sessions fail with 25006)
// and the replica promoted; once the endpoint points at it, the pool has
// retired the old generation and writes go to the new writer. User hooks
// still run on every new connection.
func TestPoolFollowsWriter(t *testing.T) {
	c := newCluster(t)
	ctx := ctxFor(t, 2*time.Minute)
	var hookRuns atomic.Int64
	p := c.newPool(func(cfg *failover.Config) {
		cfg.PoolConfig.AfterConnect = func(context.Context, *pgx.Conn) error {
			hookRuns.Add(1)
			return nil
		}
	})
	_, err := p.Exec(ctx, "CREATE TABLE t (v int)")
	require.NoError(t, err)
	w, ok := p.Writer()
	require.True(t, ok)
	require.True(t, w.Equal(c.identity(0)))
	require.Positive(t, hookRuns.Load(), "the user's AfterConnect must still run")
	gen := p.Generation()
	changed := p.WriterChanged()

	require.NoError(t, c.nodes[0].DemoteReadOnly(ctx))
	_, err = p.Exec(ctx, "INSERT INTO t VALUES (1)")
	require.Equal(t, failover.ClassReadOnly, failover.Classify(err), "%v", err)
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("WriterChanged did not fire after a read-only error")
	}
	// Until a writer answers through the endpoint, callers get a typed error.
	_, err = p.Exec(ctxWithTimeout(t, 300*time.Millisecond), "INSERT INTO t VALUES (2)")
	var nw *failover.NoWriterError
	require.ErrorAs(t, err, &nw)

	c.waitCaughtUp(0, 1)
	require.NoError(t, c.nodes[1].Promote(ctx))
	c.proxy.SetTarget(c.addr(1))
	start := time.Now()
	_, err = p.Exec(ctx, "INSERT INTO t VALUES (3)")
	require.NoError(t, err)
	t.Logf("first write on the new writer %s after the endpoint switch", time.Since(start))
	w, ok = p.Writer()
	require.True(t, ok)
	require.True(t, w.Equal(c.identity(1)))
	require.Greater(t, p.Generation(), gen)

	var n int
	require.NoError(t, c.direct(1).QueryRow(ctx, "SELECT count(*) FROM t WHERE v = 3").Scan(&n))
	require.Equal(t, 1, n)
	require.NotEmpty(t, c.eventsOf(failover.EventStaleWriter))
	ready := c.eventsOf(failover.EventGenerationReady)
	require.GreaterOrEqual(t, len(ready), 2)
	require.True(t, ready[len(ready)-1].To.Equal(c.identity(1)))
	require.True(t, ready[len(ready)-1].From.Equal(c.identity(0)))
	waitEvent(t, c, failover.EventDrainDone)
}

func ctxWithTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func waitEvent(t *testing.T, c *cluster, kind failover.EventKind) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for len(c.eventsOf(kind)) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no %s event", kind)
		}
		<-tick.C
	}
}

// TestPoolDetectsSplitBrain: the replica is promoted while the old writer
// stays writable, and the endpoint moves. The probe finds the endpoint's
// writer is another server and retires the old generation within a few
// probe intervals; no statement starts on the old writer after that.
func TestPoolDetectsSplitBrain(t *testing.T) {
	c := newCluster(t)
	ctx := ctxFor(t, 2*time.Minute)
	p := c.newPool(nil)
	_, err := p.Exec(ctx, "CREATE TABLE t (v int, at timestamptz DEFAULT clock_timestamp())")
	require.NoError(t, err)
	c.waitCaughtUp(0, 1)
	require.NoError(t, c.nodes[1].Promote(ctx))
	c.proxy.SetTarget(c.addr(1))
	switched := time.Now()

	// Keep writing; the old writer accepts these until detection.
	for i := 0; ; i++ {
		_, err := p.Exec(ctx, "INSERT INTO t (v) VALUES ($1)", i)
		require.NoError(t, err)
		if w, ok := p.Writer(); ok && w.Equal(c.identity(1)) {
			break
		}
		require.Less(t, time.Since(switched), 5*time.Second, "split brain not detected")
	}
	stale := c.eventsOf(failover.EventStaleWriter)
	require.NotEmpty(t, stale)
	detected := stale[0].At
	t.Logf("split brain detected %s after the endpoint moved", detected.Sub(switched))
	require.Less(t, detected.Sub(switched), 2*time.Second)

	// No statement started on the old writer after detection. The one
	// insert that may have been in flight at that moment (its connection
	// checked out before) can still execute just after it.
	const inFlight = 250 * time.Millisecond
	var late, inflight int
	require.NoError(t, c.direct(0).QueryRow(ctx, "SELECT count(*) FILTER (WHERE at > $1), count(*) FILTER (WHERE at > $2) FROM t",
		detected.Add(inFlight), detected).Scan(&late, &inflight))
	require.LessOrEqual(t, inflight, 1, "only one insert can have been in flight at detection")
	require.Zero(t, late, "writes reached the old writer after it was detected")
}

// TestPoolNoWriterBackoff: while the endpoint reaches only a standby, the
// pool neither floods it with connections nor surfaces pgxpool's generic
// errors: callers get *NoWriterError and connection attempts stay bounded.
func TestPoolNoWriterBackoff(t *testing.T) {
	c := newCluster(t)
	ctx := ctxFor(t, 2*time.Minute)
	// The default RebuildBackoff: at most about 10 probes a second.
	p := c.newPool(func(cfg *failover.Config) { cfg.RebuildBackoff = 0 })
	require.NoError(t, p.Ping(ctx))
	c.proxy.SetTarget(c.addr(1)) // the standby
	require.NoError(t, c.nodes[0].DemoteReadOnly(ctx))
	_, err := p.Exec(ctx, "SELECT 1") // reads still work on the pinned server...
	require.NoError(t, err)
	_, err = p.Exec(ctx, "CREATE TABLE t2 (v int)") // ...writes do not
	require.Equal(t, failover.ClassReadOnly, failover.Classify(err))

	before := c.proxy.Accepted()
	t0 := time.Now()
	var calls int
	for time.Since(t0) < 2*time.Second {
		_, err := p.Exec(ctxWithTimeout(t, 200*time.Millisecond), "SELECT 1")
		var nw *failover.NoWriterError
		require.ErrorAs(t, err, &nw, "%v", err)
		calls++
	}
	attempts := c.proxy.Accepted() - before
	t.Logf("%d calls in 2s made %d connection attempts", calls, attempts)
	// 2s at one probe per RebuildBackoffDefault, plus the first few, faster
	// ones of the backoff ramp and the last call's overrun of the 2s (a naive
	// pool makes hundreds).
	bound := int64(2*time.Second/failover.RebuildBackoffDefault) + 10
	require.LessOrEqual(t, attempts, bound, "connection attempts must be bounded while no writer exists")
	require.NotEmpty(t, c.eventsOf(failover.EventNoWriter))
}

// TestPoolListenerFollowsWriter: ConnectListener gives a verified
// connection to the writer and refuses a non-writer.
func TestPoolListener(t *testing.T) {
	c := newCluster(t)
	ctx := ctxFor(t, time.Minute)
	p := c.newPool(nil)
	conn, err := p.ConnectListener(ctx)
	require.NoError(t, err)
	var port int
	require.NoError(t, conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port))
	require.Equal(t, c.nodes[0].Port(), port)
	require.NoError(t, conn.Close(ctx))

	c.proxy.SetTarget(c.addr(1))
	_, err = p.ConnectListener(ctx)
	var sw *failover.StaleWriterError
	require.ErrorAs(t, err, &sw, "a LISTEN connection to a standby must be refused")
	var pgErr *pgconn.PgError
	require.False(t, errors.As(err, &pgErr))
}
