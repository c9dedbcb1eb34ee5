// Command failover shows skiplock riding through a reversed failover.
//
// It starts a throwaway PostgreSQL primary and a streaming replica, puts a
// TCP proxy in front of them as the "cluster endpoint", and runs producers
// and workers through a failover.Pool. Then it fails over to the replica —
// and, as a known Aurora race once did, reverses the failover seconds later,
// so the old writer is back without what the other one acknowledged in
// between. It prints a timeline of what the pool saw and the final counts.
//
//	go run ./examples/failover
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

const queueName = "events"

func main() {
	if err := run(); err != nil {
		log.SetFlags(0)
		log.Fatalf("failover example: %v", err)
	}
}

// timeline collects what happened, with times relative to the start.
type timeline struct {
	mu    sync.Mutex
	start time.Time
	lines []string
}

func (t *timeline) add(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, fmt.Sprintf("%7.3fs  %s", time.Since(t.start).Seconds(), fmt.Sprintf(format, args...)))
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tl := &timeline{start: time.Now()}

	fmt.Println("starting a primary and a streaming replica ...")
	a, err := pgtest.StartPrimary(ctx, nil)
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := a.StartReplica(ctx, nil)
	if err != nil {
		return err
	}
	defer b.Close()
	addr := func(s *pgtest.Server) string { return net.JoinHostPort(s.Host(), strconv.Itoa(s.Port())) }
	endpoint, err := pgtest.NewProxy(addr(a))
	if err != nil {
		return err
	}
	defer endpoint.Close()
	tl.add("primary A on :%d, replica B on :%d, endpoint on :%d -> A", a.Port(), b.Port(), endpoint.Port())

	cfg, err := pgxpool.ParseConfig(endpoint.ConnString("postgres"))
	if err != nil {
		return err
	}
	var firstClaimAfterReady atomic.Bool
	pool, err := failover.New(ctx, &failover.Config{
		PoolConfig:    cfg,
		ProbeInterval: 250 * time.Millisecond,
		OnEvent: func(e failover.Event) {
			switch e.Kind {
			case failover.EventStaleWriter:
				tl.add("detected: stale writer %s (%v)", e.From, e.Err)
			case failover.EventDrainStarted:
				tl.add("drain started: generation %d", e.Generation)
			case failover.EventDrainDone:
				tl.add("drained: generation %d", e.Generation)
			case failover.EventGenerationReady:
				tl.add("generation %d ready: writer %s", e.Generation, e.To)
				firstClaimAfterReady.Store(true)
			}
		},
	})
	if err != nil {
		return err
	}
	defer pool.Close()
	m, err := migrations.New(pool, nil)
	if err != nil {
		return err
	}
	if _, err := m.Up(ctx); err != nil {
		return err
	}
	client, err := queue.New(pool, nil)
	if err != nil {
		return err
	}
	defer client.Close()

	// Workers: four runners; the first claim after each new generation goes
	// on the timeline.
	var handled sync.Map // idempotency key -> times handled
	var runners []*queue.Runner
	for i := 0; i < 4; i++ {
		r, err := queue.NewRunner(client, &queue.RunnerConfig{
			Queue: queueName, Concurrency: 4, PollInterval: 100 * time.Millisecond,
			Handler: func(ctx context.Context, bt *batch.Batch) error {
				if firstClaimAfterReady.Swap(false) {
					tl.add("first claim on the new writer: batch %d", bt.ID)
				}
				n, _ := handled.LoadOrStore(bt.IdempotencyKey, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
				return nil
			},
		})
		if err != nil {
			return err
		}
		if err := r.Start(ctx); err != nil {
			return err
		}
		runners = append(runners, r)
	}

	// Producers: each batch is an offset range, so its key is stable and
	// re-asserting it after the reversal adds nothing twice.
	var acked sync.Map
	var enqueued atomic.Int64
	pctx, stopProducers := context.WithCancel(ctx)
	defer stopProducers()
	var wg sync.WaitGroup
	for p := int32(0); p < 2; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int64(0); pctx.Err() == nil; i++ {
				src := batch.Source{Topic: "clicks", Partition: p, Start: i * 500, End: (i + 1) * 500}
				_, err := client.Enqueue(pctx, queue.EnqueueParams{Queue: queueName,
					Meta: batch.Meta{Source: src, URI: fmt.Sprintf("s3://events/clicks/%d/%d", p, i), EventCount: 500}})
				if err == nil {
					acked.Store(src.Key(), true)
					enqueued.Add(1)
				}
				select {
				case <-pctx.Done():
				case <-time.After(5 * time.Millisecond):
				}
			}
		}()
	}

	sleep := func(d time.Duration) { <-time.After(d) }
	sleep(2 * time.Second)
	tl.add("failover: A read-only, B promoted, endpoint -> B")
	if err := a.DemoteReadOnly(ctx); err != nil {
		return err
	}
	if err := b.Promote(ctx); err != nil {
		return err
	}
	endpoint.SetTarget(addr(b))
	sleep(2 * time.Second)
	tl.add("the failover reverses: B read-only, A writable again, endpoint -> A")
	if err := b.DemoteReadOnly(ctx); err != nil {
		return err
	}
	if err := a.UndoReadOnly(ctx); err != nil {
		return err
	}
	endpoint.SetTarget(addr(a))
	sleep(2 * time.Second)

	stopProducers()
	wg.Wait()
	tl.add("producers stopped after %d acknowledged enqueues", enqueued.Load())

	// Let the workers finish, then check every acknowledged batch on A.
	direct, err := pgxpool.New(ctx, a.ConnString("postgres"))
	if err != nil {
		return err
	}
	defer direct.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := client.Stats(ctx, queueName)
		if err != nil {
			return err
		}
		if len(st) == 0 || st[0].Available+st[0].Running+st[0].Scheduled == 0 || time.Now().After(deadline) {
			break
		}
		sleep(100 * time.Millisecond)
	}
	for _, r := range runners {
		if err := r.Stop(ctx); err != nil {
			return err
		}
	}
	var keys []string
	acked.Range(func(k, _ any) bool { keys = append(keys, k.(string)); return true })
	var completed, queued, lost int
	for _, k := range keys {
		var done, pending bool
		err := direct.QueryRow(ctx, `SELECT
			EXISTS (SELECT 1 FROM skiplock.batch_done d JOIN skiplock.batch_key_digest k ON k.batch_id = d.id WHERE k.digest = skiplock.key_digest($1, $2)),
			EXISTS (SELECT 1 FROM skiplock.batch b JOIN skiplock.batch_key_digest k ON k.batch_id = b.id WHERE k.digest = skiplock.key_digest($1, $2))`,
			queueName, k).Scan(&done, &pending)
		if err != nil {
			return err
		}
		switch {
		case done:
			completed++
		case pending:
			queued++
		default:
			lost++
		}
	}
	twice := 0
	handled.Range(func(_, n any) bool {
		if n.(*atomic.Int64).Load() > 1 {
			twice++
		}
		return true
	})
	reasserted := client.JournalStats().ReassertedCompletions // the runners share the client

	fmt.Println("\ntimeline:")
	tl.mu.Lock()
	for _, l := range tl.lines {
		fmt.Println("  " + l)
	}
	tl.mu.Unlock()
	fmt.Printf("\nenqueued %d, completed %d, still queued %d, lost %d\n", len(keys), completed, queued, lost)
	fmt.Printf("generations: %d; enqueues re-asserted on the writer that lost them: %d; completions re-asserted: %d\n",
		pool.Generation(), client.ReassertedEnqueues(), reasserted)
	fmt.Printf("batches delivered more than once (at-least-once after the reversal discarded B's work): %d\n", twice)
	if lost != 0 {
		return errors.New("batches were lost")
	}
	return nil
}
