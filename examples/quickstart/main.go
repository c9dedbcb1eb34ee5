// Command quickstart shows skiplock end to end: it installs the tables,
// enqueues a few hundred batches that each describe a range of Kafka
// offsets stored in an object store, works them with a Runner, and stops
// gracefully.
//
// With DATABASE_URL unset it starts a throwaway local PostgreSQL from the
// machine's server binaries (and removes it at exit); with DATABASE_URL set
// it uses that database, in the schema "skiplock_quickstart".
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

const (
	schema     = "skiplock_quickstart"
	queueName  = "events"
	partitions = 6
	perPart    = 50 // batches per partition: 300 in all
	batchSize  = 500
)

func main() {
	if err := run(); err != nil {
		log.SetFlags(0)
		log.Fatalf("quickstart: %v", err)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	url := os.Getenv("DATABASE_URL")
	if url == "" {
		fmt.Println("DATABASE_URL is not set: starting a throwaway PostgreSQL ...")
		t0 := time.Now()
		srv, err := pgtest.StartPrimary(ctx, nil)
		if err != nil {
			return err
		}
		defer srv.Close()
		url = srv.ConnString("postgres")
		fmt.Printf("  listening on 127.0.0.1:%d (started in %s)\n", srv.Port(), time.Since(t0).Round(time.Millisecond))
	}

	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer pool.Close()

	// 1. Install or upgrade the tables. Safe to run from every process at start.
	m, err := migrations.New(pool, &migrations.Config{Schema: schema})
	if err != nil {
		return err
	}
	res, err := m.Up(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("schema %q at version %d (applied now: %v)\n", schema, res.Version, res.Applied)

	client, err := queue.New(pool, &queue.Config{Schema: schema})
	if err != nil {
		return err
	}
	defer client.Close()

	// 2. A producer: each batch describes 500 events of one partition, already
	// written to object storage. The idempotency key comes from the offset
	// range, so enqueueing the same range twice adds nothing.
	topic := fmt.Sprintf("clicks-%d", time.Now().UnixNano())
	var params []queue.EnqueueParams
	for p := int32(0); p < partitions; p++ {
		for i := int64(0); i < perPart; i++ {
			src := batch.Source{Topic: topic, Partition: p, Start: i * batchSize, End: (i + 1) * batchSize}
			params = append(params, queue.EnqueueParams{
				Queue: queueName,
				Meta: batch.Meta{
					PartitionKey: fmt.Sprint(p),
					URI:          fmt.Sprintf("s3://events/%s/%d/%08d.ndjson.gz", topic, p, src.Start),
					Source:       src,
					EventCount:   batchSize,
					ByteSize:     batchSize * 180,
				},
			})
		}
	}
	t0 := time.Now()
	results, err := client.EnqueueMany(ctx, params)
	if err != nil {
		return err
	}
	fmt.Printf("enqueued %d batches (%d events) in %s\n", len(results), len(results)*batchSize, time.Since(t0).Round(time.Millisecond))

	again, err := client.EnqueueMany(ctx, params)
	if err != nil {
		return err
	}
	dups := 0
	for _, r := range again {
		if r.Duplicate {
			dups++
		}
	}
	fmt.Printf("enqueued the same %d offset ranges again: %d added, %d recognised as duplicates\n", len(again), len(again)-dups, dups)

	// 3. Workers: a Runner claims batches, runs the handler, renews leases and
	// acknowledges outcomes. A real handler would read b.URI and deliver the
	// events; a returned error retries the batch with backoff.
	var handled, events atomic.Int64
	allDone := make(chan struct{})
	runner, err := queue.NewRunner(client, &queue.RunnerConfig{
		Queue:       queueName,
		Concurrency: 8,
		Handler: func(ctx context.Context, b *batch.Batch) error {
			events.Add(b.EventCount)
			if handled.Add(1) == int64(len(params)) {
				close(allDone)
			}
			return nil
		},
	})
	if err != nil {
		return err
	}
	t0 = time.Now()
	if err := runner.Start(ctx); err != nil {
		return err
	}
	select {
	case <-allDone:
	case <-ctx.Done():
	case <-time.After(2 * time.Minute):
	}
	elapsed := time.Since(t0)

	// 4. Graceful stop: stop claiming, let handlers finish, acknowledge.
	stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := runner.Stop(stopCtx); err != nil {
		return err
	}
	st := runner.Stats()
	fmt.Printf("worked %d batches (%d events) with 8 handlers in %s: completed %d, retried %d, dead %d\n",
		handled.Load(), events.Load(), elapsed.Round(time.Millisecond), st.Completed, st.Retried, st.Dead)

	stats, err := client.Stats(ctx, queueName)
	if err != nil {
		return err
	}
	left := int64(0)
	for _, s := range stats {
		left += s.Available + s.Scheduled + s.Running + s.Dead
	}
	fmt.Printf("left in the queue: %d\n", left)
	if st.Completed != int64(len(params)) || left != 0 {
		return errors.New("not every batch was completed")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	fmt.Println("done.")
	return nil
}
