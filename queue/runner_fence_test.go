package queue_test

import (
	"bytes"
	"context"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

// watchedDB is a real pool whose writer-change signal the test drives: the
// database stays real, only the signal is the test's.
type watchedDB struct {
	*pgxpool.Pool
	mu sync.Mutex
	ch chan struct{}
}

func newWatchedDB(p *pgxpool.Pool) *watchedDB { return &watchedDB{Pool: p, ch: make(chan struct{})} }

func (w *watchedDB) WriterChanged() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch
}

// change signals a writer change and returns when it was signalled.
func (w *watchedDB) change() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	close(w.ch)
	w.ch = make(chan struct{})
	return time.Now()
}

type cancelled struct {
	id    int64
	cause error
	at    time.Time
}

// blockingHandler reports each batch it starts and each cancellation, and
// runs until its context is cancelled.
func blockingHandler(started chan<- *batch.Batch, cancels chan<- cancelled) queue.HandlerFunc {
	return func(ctx context.Context, b *batch.Batch) error {
		started <- b
		<-ctx.Done()
		cancels <- cancelled{id: b.ID, cause: context.Cause(ctx), at: time.Now()}
		return ctx.Err()
	}
}

func receive[T any](t *testing.T, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("timed out after %s waiting for %s", d, what)
		panic("unreachable")
	}
}

func durationStats(ds []time.Duration) (median, maximum time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2], s[len(s)-1]
}

// TestRunnerReconfirmsOnWriterChange: after a writer change the runner
// re-confirms its leases at once, not at the next heartbeat (20 s away): a
// batch the new writer has as available with no lease (our claim was lost)
// is re-taken under the same token and its handler keeps running; a batch
// another runner holds, or whose id now names another batch (other
// creation time), has its handler cancelled with ErrLeaseLost. The time
// from the change to the cancellation is measured over several rounds.
func TestRunnerReconfirmsOnWriterChange(t *testing.T) {
	t.Parallel()
	const rounds = 8
	e := newEnv(t, nil)
	db := newWatchedDB(e.pool)
	client := newClient(t, db, e.schema, nil)
	started := make(chan *batch.Batch, 2*rounds)
	cancels := make(chan cancelled, 2*rounds)
	r := startRunner(t, client, queue.RunnerConfig{
		Queue:             "reconfirm",
		Concurrency:       2 * rounds,
		LeaseDuration:     30 * time.Second,
		HeartbeatInterval: 20 * time.Second,
		FenceMargin:       6 * time.Second,
		PollInterval:      20 * time.Millisecond,
		Handler:           blockingHandler(started, cancels),
	})
	ctx := testContext(t)
	var latencies []time.Duration
	for round := 0; round < rounds; round++ {
		ids := enqueueN(t, e.client, "reconfirm", 2)
		a := receive(t, started, 10*time.Second, "handler A")
		b := receive(t, started, 10*time.Second, "handler B")
		if a.ID != ids[0] {
			a, b = b, a
		}
		// Paused, so that the runner's own claim loop does not claim A
		// again before the re-confirmation re-takes it (see the Runner doc).
		require.NoError(t, e.client.Pause(ctx, "reconfirm"))
		// The new writer lost A's claim; B was claimed by someone else, or
		// (odd rounds) B's id names another batch there.
		e.exec("UPDATE "+e.q("batch")+" SET state = 'available', attempt = attempt - 1, lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL WHERE id = $1", a.ID)
		if round%2 == 0 {
			e.exec("UPDATE "+e.q("batch")+" SET lease_token = lease_token + 1 WHERE id = $1", b.ID)
		} else {
			e.exec("UPDATE "+e.q("batch")+" SET state = 'available', created_at = created_at - interval '1 second', lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL WHERE id = $1", b.ID)
		}
		at := db.change()
		c := receive(t, cancels, 10*time.Second, "B's handler to be cancelled")
		require.Equal(t, b.ID, c.id, "only B's handler may be cancelled")
		require.ErrorIs(t, c.cause, queue.ErrLeaseLost)
		latencies = append(latencies, c.at.Sub(at))

		var token int64
		var attempt int
		var state string
		require.NoError(t, e.pool.QueryRow(ctx, "SELECT state, coalesce(lease_token, 0), attempt FROM "+e.q("batch")+" WHERE id = $1", a.ID).Scan(&state, &token, &attempt))
		require.Equal(t, "running", state)
		require.Equal(t, a.Lease.Token, token, "A must be re-taken under its own token")
		require.Equal(t, 1, attempt, "the re-take counts the attempt the lost claim counted")
		if round%2 == 1 {
			require.Equal(t, 1, e.count("WHERE id = $1 AND state = 'available'", b.ID), "another batch with B's id must not be taken")
			e.exec("DELETE FROM "+e.q("batch")+" WHERE id = $1", b.ID) // not part of this test
		}
		require.NoError(t, e.client.Resume(ctx, "reconfirm"))
	}
	select {
	case c := <-cancels:
		t.Fatalf("handler of batch %d cancelled (%v); re-taken batches must keep running", c.id, c.cause)
	default:
	}
	st := r.Stats()
	require.EqualValues(t, rounds, st.Retaken)
	require.GreaterOrEqual(t, st.Reconfirms, int64(rounds))
	med, mx := durationStats(latencies)
	t.Logf("writer change -> cancellation of a handler whose lease was lost: median %s, max %s (%d rounds)", med, mx, rounds)
	require.Less(t, mx, 5*time.Second, "far sooner than the next heartbeat (20 s)")
}

// TestRunnerReclaimBySameRunner: one runner holds two claims of the same
// batch (the first lost its lease, the runner claimed the batch again under
// a new token). Settling the first claim must not forget the second: its
// lease keeps being renewed and its handler is not fenced.
func TestRunnerReclaimBySameRunner(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	started := make(chan *batch.Batch, 4)
	cancels := make(chan cancelled, 4)
	finish := make(chan struct{})
	lease := 3 * time.Second
	r := startRunner(t, e.client, queue.RunnerConfig{
		Queue:             "again",
		Concurrency:       2,
		LeaseDuration:     lease,
		HeartbeatInterval: 300 * time.Millisecond,
		FenceMargin:       time.Second,
		PollInterval:      20 * time.Millisecond,
		Handler: func(ctx context.Context, b *batch.Batch) error {
			started <- b
			select {
			case <-ctx.Done():
				cancels <- cancelled{id: b.ID, cause: context.Cause(ctx), at: time.Now()}
				return ctx.Err()
			case <-finish:
				return nil
			}
		},
	})
	ids := enqueueN(t, e.client, "again", 1)
	first := receive(t, started, 10*time.Second, "the first claim")
	// The lease is gone (as after an expiry): the row is available again,
	// as a batch the first claim cannot re-take (other creation time).
	e.exec("UPDATE "+e.q("batch")+" SET state = 'available', created_at = created_at - interval '1 second', lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL WHERE id = $1", ids[0])
	second := receive(t, started, 10*time.Second, "the second claim")
	require.Equal(t, first.ID, second.ID)
	require.NotEqual(t, first.Lease.Token, second.Lease.Token)
	c := receive(t, cancels, 10*time.Second, "the first handler to be cancelled")
	require.ErrorIs(t, c.cause, queue.ErrLeaseLost)
	waitFor(t, 10*time.Second, "the first claim to be settled", func() bool { return r.Stats().LeaseLost == 1 })

	// Heartbeats still renew the second claim, well past its first expiry.
	waitFor(t, 10*time.Second, "a renewal of the second claim after the first was settled", func() bool {
		var exp time.Time
		require.NoError(t, e.pool.QueryRow(ctx, "SELECT lease_expires_at FROM "+e.q("batch")+" WHERE id = $1 AND lease_token = $2", second.ID, second.Lease.Token).Scan(&exp))
		return exp.After(second.Lease.ExpiresAt.Add(lease))
	})
	select {
	case c := <-cancels:
		t.Fatalf("the second handler was cancelled: %v", c.cause)
	default:
	}
	require.Equal(t, 1, r.Stats().Running)
	close(finish)
	waitFor(t, 10*time.Second, "the completion", func() bool { return r.Stats().Completed == 1 })
	require.Equal(t, []int64{second.Lease.Token}, e.doneTokens()[second.ID])
}

// answerDropper makes the answer to one claim round trip get lost: the
// first write that carries both markers (a claim's queue and owner
// parameters) reaches the server, and from then on that connection reads
// nothing, as behind a blackhole, until pgx gives up on it.
type answerDropper struct {
	markers [][]byte
	armed   atomic.Bool
	fired   atomic.Int64 // unix nanos of the dropped write
}

type droppingConn struct {
	net.Conn
	d    *answerDropper
	drop atomic.Bool
}

func (c *droppingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.d.armed.Load() && err == nil {
		for _, m := range c.d.markers {
			if !bytes.Contains(p, m) {
				return n, err
			}
		}
		if c.d.armed.CompareAndSwap(true, false) {
			c.drop.Store(true)
			c.d.fired.Store(time.Now().UnixNano())
		}
	}
	return n, err
}

func (c *droppingConn) Read(p []byte) (int, error) {
	if !c.drop.Load() {
		return c.Conn.Read(p)
	}
	buf := make([]byte, 8192)
	for {
		if _, err := c.Conn.Read(buf); err != nil {
			return 0, err
		}
	}
}

// TestRunnerReleasesLostClaim: the answer to a claim of three batches is
// lost after the claim committed. The runner chose the lease token, so the
// next round trip releases what it holds and claims again: every batch is
// handled once, with attempt 1, long before the 30 s lease would expire.
func TestRunnerReleasesLostClaim(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	const owner = "lost-answer-owner"
	d := &answerDropper{markers: [][]byte{[]byte("lostanswer"), []byte(owner)}}
	pcfg, err := pgxpool.ParseConfig(e.url)
	require.NoError(t, err)
	pcfg.MaxConns = 4
	pcfg.ConnConfig.AfterNetConnect = func(_ context.Context, _ *pgconn.Config, conn net.Conn) (net.Conn, error) {
		return &droppingConn{Conn: conn, d: d}, nil
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	client := newClient(t, pool, e.schema, &queue.Config{OpTimeout: time.Second})

	ids := enqueueN(t, e.client, "lostanswer", 3)
	var mu sync.Mutex
	attempts := map[int64][]int{}
	var handled atomic.Int64
	d.armed.Store(true)
	start := time.Now()
	r := startRunner(t, client, queue.RunnerConfig{
		Queue:         "lostanswer",
		Concurrency:   4,
		LeaseDuration: 30 * time.Second,
		PollInterval:  50 * time.Millisecond,
		Owner:         owner,
		Handler: func(ctx context.Context, b *batch.Batch) error {
			mu.Lock()
			attempts[b.ID] = append(attempts[b.ID], b.Attempt)
			mu.Unlock()
			handled.Add(1)
			return nil
		},
	})
	waitFor(t, 15*time.Second, "all batches handled after the lost claim answer", func() bool { return handled.Load() == 3 })
	took := time.Since(start)
	require.NotZero(t, d.fired.Load(), "a claim answer must have been dropped")
	t.Logf("all batches handled %s after start (lost claim answer at +%s)", took, time.Unix(0, d.fired.Load()).Sub(start))
	require.Less(t, took, 15*time.Second, "well before the 30 s lease")
	waitFor(t, 10*time.Second, "completions", func() bool { return r.Stats().Completed == 3 })
	st := r.Stats()
	require.Positive(t, st.RoundTripErrors)
	require.GreaterOrEqual(t, st.Released, int64(3))
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		require.Equal(t, []int{1}, attempts[id], "batch %d: handled once, attempt not inflated", id)
	}
	require.Zero(t, e.count("WHERE queue = 'lostanswer'"))
}

// TestReleaseTokensPlan: the release of lost claims' tokens reads the
// partial index of running rows, not the whole table, with a million
// available rows (custom and generic plans).
func TestReleaseTokensPlan(t *testing.T) {
	if testing.Short() {
		t.Skip("loads a million rows")
	}
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	e.exec("INSERT INTO " + e.q("batch") + " (queue, max_attempts) SELECT 'plan', 5 FROM generate_series(1, 1000000)")
	e.exec("UPDATE " + e.q("batch") + " SET state = 'running', lease_token = id, lease_expires_at = now() + interval '1 minute', attempt = 1 WHERE id % 10000 = 0")
	e.exec("ANALYZE " + e.q("batch"))
	sql := strings.ReplaceAll(queue.SQLReleaseTokensForTest, "{s}", pgx.Identifier{e.schema}.Sanitize())
	for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
		conn, err := e.pool.Acquire(ctx)
		require.NoError(t, err)
		_, err = conn.Exec(ctx, "SET plan_cache_mode = "+mode)
		require.NoError(t, err)
		_, err = conn.Exec(ctx, "PREPARE rel(int8[], float8) AS "+sql)
		require.NoError(t, err)
		rows, err := conn.Query(ctx, "EXPLAIN EXECUTE rel('{20000,30000,7}', 5000000)")
		require.NoError(t, err)
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		_, err = conn.Exec(ctx, "DEALLOCATE rel")
		require.NoError(t, err)
		conn.Release()
		plan := strings.Join(lines, "\n")
		t.Logf("%s:\n%s", mode, plan)
		require.NotContains(t, plan, "Seq Scan", "%s", plan)
		require.Contains(t, plan, "batch_lease_idx", "%s", plan)
	}
}

// TestRunnerReconfirmAfterFailover: a real primary and streaming replica
// behind a proxy, reached through a failover.Pool. After the replica is
// promoted, its rows are changed directly to what a lost commit leaves:
// batch A has no claim (available), batch B's id names another batch (other
// creation time). When the endpoint moves, the runner re-takes A under its
// token and cancels B's handler, long before the next heartbeat.
func TestRunnerReconfirmAfterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a primary and a replica")
	}
	t.Parallel()
	primary, replica := pgtest.NewPair(t, nil)
	addr := func(s *pgtest.Server) string { return net.JoinHostPort(s.Host(), strconv.Itoa(s.Port())) }
	proxy := pgtest.NewTestProxy(t, addr(primary))
	ctx := testContext(t)
	direct := func(s *pgtest.Server) *pgxpool.Pool {
		p, err := pgxpool.New(context.Background(), s.ConnString("postgres"))
		require.NoError(t, err)
		t.Cleanup(p.Close)
		return p
	}
	const schema = "skiplock"
	m, err := migrations.New(direct(primary), &migrations.Config{Schema: schema})
	require.NoError(t, err)
	_, err = m.Up(ctx)
	require.NoError(t, err)

	pcfg, err := pgxpool.ParseConfig(proxy.ConnString("postgres"))
	require.NoError(t, err)
	pcfg.MaxConns = 8
	fp, err := failover.New(ctx, &failover.Config{
		PoolConfig:     pcfg,
		ProbeInterval:  250 * time.Millisecond,
		RebuildBackoff: 100 * time.Millisecond,
	})
	require.NoError(t, err)
	t.Cleanup(fp.Close)
	client := newClient(t, fp, schema, nil)

	started := make(chan *batch.Batch, 4)
	cancels := make(chan cancelled, 4)
	r := startRunner(t, client, queue.RunnerConfig{
		Queue:             "failover",
		Concurrency:       4,
		LeaseDuration:     30 * time.Second,
		HeartbeatInterval: 20 * time.Second,
		FenceMargin:       6 * time.Second,
		PollInterval:      20 * time.Millisecond,
		Handler:           blockingHandler(started, cancels),
	})
	ids := enqueueN(t, client, "failover", 2)
	a := receive(t, started, 15*time.Second, "handler A")
	b := receive(t, started, 15*time.Second, "handler B")
	if a.ID != ids[0] {
		a, b = b, a
	}
	// Pause (before the failover, so the new writer has it): the runner's
	// own claim loop must not claim A again before the re-take.
	require.NoError(t, client.Pause(ctx, "failover"))

	// Planned failover: the old writer turns read-only, the replica catches
	// up and is promoted; then the lost commits are simulated on it.
	old, promoted := direct(primary), direct(replica)
	var lsn string
	require.NoError(t, old.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn))
	waitFor(t, 30*time.Second, "the replica to catch up", func() bool {
		var ok bool
		require.NoError(t, promoted.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&ok))
		return ok
	})
	require.NoError(t, primary.DemoteReadOnly(ctx))
	require.NoError(t, replica.Promote(ctx))
	tbl := pgx.Identifier{schema, "batch"}.Sanitize()
	_, err = promoted.Exec(ctx, "UPDATE "+tbl+" SET state = 'available', attempt = attempt - 1, lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL WHERE id = $1", a.ID)
	require.NoError(t, err)
	_, err = promoted.Exec(ctx, "UPDATE "+tbl+" SET state = 'available', created_at = created_at - interval '1 second', lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL WHERE id = $1", b.ID)
	require.NoError(t, err)
	proxy.SetTarget(addr(replica))
	moved := time.Now()

	c := receive(t, cancels, 15*time.Second, "B's handler to be cancelled")
	require.Equal(t, b.ID, c.id)
	require.ErrorIs(t, c.cause, queue.ErrLeaseLost)
	waitFor(t, 15*time.Second, "A to be re-taken on the new writer", func() bool {
		var token int64
		require.NoError(t, promoted.QueryRow(ctx, "SELECT coalesce(lease_token, 0) FROM "+tbl+" WHERE id = $1", a.ID).Scan(&token))
		return token == a.Lease.Token
	})
	retakenAfter := time.Since(moved)
	t.Logf("endpoint moved -> B cancelled after %s, A re-taken within %s", c.at.Sub(moved), retakenAfter)
	require.Less(t, c.at.Sub(moved), 10*time.Second, "well before the next heartbeat (20 s)")
	var attempt int
	require.NoError(t, promoted.QueryRow(ctx, "SELECT attempt FROM "+tbl+" WHERE id = $1", a.ID).Scan(&attempt))
	require.Equal(t, 1, attempt)
	var other string
	require.NoError(t, promoted.QueryRow(ctx, "SELECT state FROM "+tbl+" WHERE id = $1", b.ID).Scan(&other))
	require.Equal(t, "available", other, "the other batch with B's id is left alone")
	select {
	case c := <-cancels:
		t.Fatalf("A's handler was cancelled: %v", c.cause)
	default:
	}
	require.EqualValues(t, 1, r.Stats().Retaken)
}
