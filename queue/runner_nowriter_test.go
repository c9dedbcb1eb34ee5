package queue_test

import (
	"context"
	"testing"
	"time"

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
	srv := pgtest.NewPrimary(t, nil)
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
	noWriter := make(chan struct{}, 1)
	fp, err := failover.New(ctx, &failover.Config{
		PoolConfig:     pcfg,
		ProbeInterval:  100 * time.Millisecond,
		RebuildBackoff: 100 * time.Millisecond,
		WriterWait:     500 * time.Millisecond,
		OnEvent: func(e failover.Event) {
			if e.Kind == failover.EventStaleWriter {
				select {
				case noWriter <- struct{}{}:
				default:
				}
			}
		},
	})
	require.NoError(t, err)
	t.Cleanup(fp.Close)
	client := newClient(t, fp, schema, nil)

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
