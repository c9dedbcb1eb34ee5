package queue_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

// TestRunnerStopsWithoutAWriter: the only server turns read-only while handlers run, so no
// writer exists and every round trip fails with *failover.NoWriterError. StopAndCancel must
// still return once its context and one round-trip timeout have passed, reporting the
// outcomes it could not acknowledge (their leases expire), rather than retry them for ever.
// A chaos run once hung here after a planned failover failed between demoting the writer
// and promoting the replica.
func TestRunnerStopsWithoutAWriter(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	t.Parallel()
	srv, _, client, noWriter := readOnlyEnv(t)
	ctx := testContext(t)

	started := make(chan *batch.Batch, 4)
	r, err := queue.NewRunner(client, &queue.RunnerConfig{
		Queue:         "nowriter",
		Concurrency:   4,
		LeaseDuration: 3 * time.Second, // round-trip timeout: 1 s
		PollInterval:  20 * time.Millisecond,
		Handler: func(ctx context.Context, b *batch.Batch) error {
			started <- b
			<-ctx.Done()
			return ctx.Err()
		},
	})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	enqueueN(t, client, "nowriter", 2)
	receive(t, started, 15*time.Second, "a handler")
	receive(t, started, 15*time.Second, "another handler")

	require.NoError(t, srv.DemoteReadOnly(ctx))
	receive(t, noWriter, 15*time.Second, "the pool to find the writer read-only")

	stopCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	begin := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- r.StopAndCancel(stopCtx) }()
	err = receive(t, stopped, 30*time.Second, "StopAndCancel to return")
	took := time.Since(begin)
	t.Logf("StopAndCancel returned after %s: %v", took.Round(time.Millisecond), err)
	require.Error(t, err, "the releases were not acknowledged, and Stop must say so")
	require.Less(t, took, 2*time.Second+5*time.Second, "Stop overran its context by more than the round-trip grace allows")
	select {
	case <-r.Stopped():
	default:
		t.Fatal("Stopped() not closed after StopAndCancel returned")
	}
}

// readOnlyEnv starts a server of its own with the schema migrated, and a
// client on a failover pool to it; noWriter receives when the pool finds
// the writer read-only.
func readOnlyEnv(t *testing.T) (srv *pgtest.Server, direct *pgxpool.Pool, client *queue.Client, noWriter <-chan struct{}) {
	t.Helper()
	srv = pgtest.NewPrimary(t, nil)
	ctx := testContext(t)
	direct, err := pgxpool.New(ctx, srv.ConnString("postgres"))
	require.NoError(t, err)
	t.Cleanup(direct.Close)
	const schema = "skiplock"
	m, err := migrations.New(direct, &migrations.Config{Schema: schema})
	require.NoError(t, err)
	_, err = m.Up(ctx)
	require.NoError(t, err)

	pcfg, err := pgxpool.ParseConfig(srv.ConnString("postgres"))
	require.NoError(t, err)
	stale := make(chan struct{}, 1)
	fp, err := failover.New(ctx, &failover.Config{
		PoolConfig:     pcfg,
		ProbeInterval:  100 * time.Millisecond,
		RebuildBackoff: 100 * time.Millisecond,
		WriterWait:     500 * time.Millisecond,
		OnEvent: func(e failover.Event) {
			if e.Kind == failover.EventStaleWriter {
				select {
				case stale <- struct{}{}:
				default:
				}
			}
		},
	})
	require.NoError(t, err)
	t.Cleanup(fp.Close)
	return srv, direct, newClient(t, fp, schema, nil), stale
}

// TestNoReclaimRightAfterAnOutage: while no writer exists, leases expire
// although their runner is alive and holds a finished outcome. When the
// writer is back, the runners of that process leave expired leases alone
// for a moment, so the owner's completion lands first and the batch is not
// run again. (A chaos run had batches delivered twice this way after
// blackholes and windows with no writer.)
func TestNoReclaimRightAfterAnOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	t.Parallel()
	srv, direct, client, noWriter := readOnlyEnv(t)
	ctx := testContext(t)

	var mu sync.Mutex
	runs := map[int64]int{}
	started := make(chan int64, 4)
	finish := make(chan struct{})
	var cancelledFirst atomic.Bool
	var runners []*queue.Runner
	for range 2 {
		runners = append(runners, startRunner(t, client, queue.RunnerConfig{
			Queue:           "outage",
			Concurrency:     2,
			LeaseDuration:   5 * time.Second, // the fence would cancel the handler 4 s after its last renewal
			ReclaimInterval: 20 * time.Millisecond,
			PollInterval:    20 * time.Millisecond,
			Handler: func(ctx context.Context, b *batch.Batch) error {
				mu.Lock()
				runs[b.ID]++
				n := runs[b.ID]
				mu.Unlock()
				started <- b.ID
				if n == 1 {
					select {
					case <-finish:
					case <-ctx.Done():
						cancelledFirst.Store(true)
						return ctx.Err()
					}
				}
				return nil
			},
		}))
	}
	id := enqueueN(t, client, "outage", 1)[0]
	require.Equal(t, id, receive(t, started, 15*time.Second, "the handler"))

	require.NoError(t, srv.DemoteReadOnly(ctx))
	receive(t, noWriter, 15*time.Second, "the pool to find the writer read-only")
	close(finish) // the handler is done; its completion cannot be written
	tbl := pgx.Identifier{"skiplock", "batch"}.Sanitize()
	waitFor(t, 15*time.Second, "the lease to expire on the server", func() bool {
		var expired bool
		require.NoError(t, direct.QueryRow(ctx, "SELECT lease_expires_at < now() FROM "+tbl+" WHERE id = $1", id).Scan(&expired))
		return expired
	})
	require.NoError(t, srv.UndoReadOnly(ctx))
	waitFor(t, 15*time.Second, "the batch to be completed", func() bool {
		var n int
		require.NoError(t, direct.QueryRow(ctx, "SELECT count(*) FROM "+tbl+" WHERE id = $1", id).Scan(&n))
		return n == 0
	})
	var done int
	require.NoError(t, direct.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{"skiplock", "batch_done"}.Sanitize()+" WHERE id = $1", id).Scan(&done))
	require.Equal(t, 1, done, "completed, not dead-lettered or dropped")
	require.False(t, cancelledFirst.Load(), "the first run was cancelled before it could finish: the set-up took longer than the lease")
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, 1, runs[id], "the batch ran again: its expired lease was reclaimed before the owner's completion landed")
	for _, r := range runners {
		require.Zero(t, r.Stats().Reclaimed)
	}
}

// TestReclaimSparesItsOwnRunnersLeases: a lease that expired while its
// runner could not reach a writer is left to that runner by every reclaim
// through the same Client (the runner's own reclaim loop included), so a
// handler that finished during the outage is acknowledged instead of run
// again; a reclaim through another Client (another process) still takes
// it. A 30-minute chaos run delivered 8 batches twice this way: finished
// at the start of a window with no writer, reclaimed by a sibling runner
// 20 s later, when the writer came back, before the owner's completion.
func TestReclaimSparesItsOwnRunnersLeases(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	started := make(chan int64, 2)
	release := make(chan struct{})
	startRunner(t, e.client, queue.RunnerConfig{
		Queue:           "own",
		LeaseDuration:   time.Minute, // no renewal within the test's few round trips
		ReclaimInterval: 10 * time.Millisecond,
		Handler: func(ctx context.Context, b *batch.Batch) error {
			started <- b.ID
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		},
	})
	id := enqueueN(t, e.client, "own", 1)[0]
	require.Equal(t, id, receive(t, started, 15*time.Second, "the handler"))
	// The lease runs out on the server, as it does while no writer is
	// reachable and the runner cannot renew it.
	e.exec(`UPDATE ` + e.q("batch") + ` SET lease_expires_at = now() - interval '1 second' WHERE id = ` + strconv.FormatInt(id, 10))

	avail, dead, err := e.client.ReclaimExpired(ctx, "own")
	require.NoError(t, err)
	require.Zero(t, avail+dead, "a reclaim through the runner's own client took the lease it holds")
	avail, dead, err = e.client.ReclaimExpired(ctx, "")
	require.NoError(t, err)
	require.Zero(t, avail+dead, "a reclaim of every queue through the runner's own client took the lease it holds")
	var state string
	require.NoError(t, e.pool.QueryRow(ctx, `SELECT state FROM `+e.q("batch")+` WHERE id = $1`, id).Scan(&state))
	require.Equal(t, "running", state, "the runner's own reclaim loop took the lease")

	other := newClient(t, e.pool, e.schema, nil)
	avail, dead, err = other.ReclaimExpired(ctx, "own")
	require.NoError(t, err)
	require.Equal(t, 1, avail, "another client (process) must reclaim an expired lease")
	require.Zero(t, dead)
	close(release)
}
