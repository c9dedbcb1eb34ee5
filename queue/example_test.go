package queue_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

// Example enqueues a batch that describes 500 Kafka events stored in an
// object store, shows that enqueueing the same offset range again adds
// nothing, and works the batch with a Runner.
func Example() {
	ctx := context.Background()
	pool, schema, cleanup := exampleDB()
	defer cleanup()

	// Install or upgrade the tables; safe to run from every process at start.
	m, err := migrations.New(pool, &migrations.Config{Schema: schema})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := m.Up(ctx); err != nil {
		log.Fatal(err)
	}

	client, err := queue.New(pool, &queue.Config{Schema: schema})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	// Producer: the idempotency key defaults to the source range's.
	params := queue.EnqueueParams{
		Queue: "clicks",
		Meta: batch.Meta{
			URI:        "s3://events/clicks/0/00000000.ndjson.gz",
			Source:     batch.Source{Topic: "clicks", Partition: 0, Start: 0, End: 500},
			EventCount: 500,
		},
	}
	if _, err := client.Enqueue(ctx, params); err != nil {
		log.Fatal(err)
	}
	again, err := client.Enqueue(ctx, params)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("second enqueue is a duplicate:", again.Duplicate)

	// Worker: return nil to complete, an error to retry later.
	delivered := make(chan struct{})
	runner, err := queue.NewRunner(client, &queue.RunnerConfig{
		Queue: "clicks",
		Handler: func(ctx context.Context, b *batch.Batch) error {
			fmt.Printf("delivering %d events of %s from %s\n", b.EventCount, b.Source, b.URI)
			close(delivered)
			return nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := runner.Start(ctx); err != nil {
		log.Fatal(err)
	}
	<-delivered
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := runner.Stop(stopCtx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("completed:", runner.Stats().Completed)

	// Output:
	// second enqueue is a duplicate: true
	// delivering 500 events of clicks[0]:0-500 from s3://events/clicks/0/00000000.ndjson.gz
	// completed: 1
}

// exampleTB lets examples use the test servers: failures panic, cleanups
// run when the example calls the returned function.
type exampleTB struct{ cleanups []func() }

func (e *exampleTB) Helper()                        {}
func (e *exampleTB) Cleanup(f func())               { e.cleanups = append(e.cleanups, f) }
func (e *exampleTB) Fatalf(format string, a ...any) { panic(fmt.Sprintf(format, a...)) }
func (e *exampleTB) Logf(string, ...any)            {}
func (e *exampleTB) Name() string                   { return "Example" }

func (e *exampleTB) cleanup() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
}

func exampleDB() (*pgxpool.Pool, string, func()) {
	tb := &exampleTB{}
	url := pgtest.SharedURL(tb)
	schema := pgtest.NewSchema(tb, url)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		panic(err)
	}
	tb.Cleanup(pool.Close)
	return pool, schema, tb.cleanup
}
