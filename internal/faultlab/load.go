package faultlab

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// Defaults of LoadConfig.
const (
	QueueDefault         = "events"
	ProducersDefault     = 2
	RunnersDefault       = 4
	ConcurrencyDefault   = 4
	RateDefault          = 40 // batches per second per producer
	ItemsPerBatchDefault = 10
	LeaseDefault         = 10 * time.Second
	WorkDefault          = 2 * time.Millisecond
	LongWorkDefault      = 1500 * time.Millisecond
	LongEveryDefault     = 40
	OverlapMarginDefault = time.Second
	RecoveryLimitDefault = 30 * time.Second
)

// LoadConfig configures StartLoad. A nil *LoadConfig means all defaults.
type LoadConfig struct {
	// Schema of the queue tables. Defaults to SchemaDefault.
	Schema string
	// Queue is the queue name. Defaults to QueueDefault.
	Queue string
	// Producers cut batches with a batch.Builder and enqueue them. Defaults to
	// ProducersDefault.
	Producers int
	// Runners handle batches. Defaults to RunnersDefault.
	Runners int
	// Concurrency and ClaimSize of each runner. Default to ConcurrencyDefault.
	Concurrency int
	// Rate is how many batches each producer cuts per second. Defaults to RateDefault.
	Rate float64
	// ItemsPerBatch is how many source offsets one batch covers. Defaults to
	// ItemsPerBatchDefault.
	ItemsPerBatch int
	// Lease is the runners' lease duration. Defaults to LeaseDefault.
	Lease time.Duration
	// Work is how long a handler works on most batches; every LongEvery-th batch (by source
	// offset) takes LongWork, so that some batches are in flight for a while when a fault
	// hits. Default to WorkDefault, LongWorkDefault and LongEveryDefault.
	Work, LongWork time.Duration
	LongEvery      int
	// OverlapMargin: two executions of one batch that overlap longer than this are reported
	// as overlapping handlers. Defaults to OverlapMarginDefault.
	OverlapMargin time.Duration
	// RecoveryLimit bounds how long FirstStartAfter waits. Defaults to RecoveryLimitDefault.
	RecoveryLimit time.Duration
	// RunnerDB, if set, gives each runner its own database handle (and queue.Client);
	// otherwise the runners share the producers' client. Defaults to nil.
	RunnerDB func(ctx context.Context, runner int) (queue.DB, error)
	// Logger for the clients. Defaults to zap.NewNop().
	Logger *zap.Logger
}

func (c *LoadConfig) withDefaults() LoadConfig {
	var o LoadConfig
	if c != nil {
		o = *c
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if o.Schema == "" {
		o.Schema = SchemaDefault
	}
	if o.Queue == "" {
		o.Queue = QueueDefault
	}
	def(&o.Producers, ProducersDefault)
	def(&o.Runners, RunnersDefault)
	def(&o.Concurrency, ConcurrencyDefault)
	def(&o.ItemsPerBatch, ItemsPerBatchDefault)
	def(&o.LongEvery, LongEveryDefault)
	if o.Rate == 0 {
		o.Rate = RateDefault
	}
	defD(&o.Lease, LeaseDefault)
	defD(&o.Work, WorkDefault)
	defD(&o.LongWork, LongWorkDefault)
	defD(&o.OverlapMargin, OverlapMarginDefault)
	defD(&o.RecoveryLimit, RecoveryLimitDefault)
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return o
}

// Execution is one handler run of a batch.
type Execution struct {
	BatchID int64
	Created int64  // the batch's creation time, Unix microseconds: with BatchID its identity on one writer
	Key     string // the idempotency key: the batch's identity across writers
	Token   int64
	Runner  string
	Start   time.Time
	End     time.Time // zero while running (or for a killed worker's batch until the kill is recorded)
	// Done: the handler did all its work (returned nil, not cancelled): the batch was
	// delivered by this run.
	Done bool
}

// EnqueueCall is one Enqueue of a producer, as the producer saw it.
type EnqueueCall struct {
	Producer int
	At       time.Time
	Took     time.Duration
	Err      error
}

// Load is the producers and runners of one run and what they saw: acknowledged enqueues and
// every handler execution.
type Load struct {
	cfg     LoadConfig
	Client  *queue.Client
	clients []*queue.Client // every client, Client first
	Runners []*queue.Runner

	mu      sync.Mutex
	acked   map[string]time.Time // idempotency key -> when its enqueue was acknowledged
	execs   []*Execution
	calls   []EnqueueCall
	waiters []*execWaiter
	// discarded holds lease tokens of claims made on a writer whose history
	// did not survive (see DiscardClaims), with when that writer took writes.
	discarded map[int64]time.Time

	stopProd  context.CancelFunc
	producers sync.WaitGroup
	stopOnce  sync.Once
}

type execWaiter struct {
	after time.Time
	ch    chan time.Time
}

// StartLoad starts the runners (on db, or each on cfg.RunnerDB) and the producers (on db).
// Stop it with Finish (which also checks) or Stop.
func StartLoad(ctx context.Context, db queue.DB, cfg *LoadConfig) (_ *Load, err error) {
	o := cfg.withDefaults()
	client, err := queue.New(db, &queue.Config{Schema: o.Schema, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	l := &Load{cfg: o, Client: client, clients: []*queue.Client{client}, acked: map[string]time.Time{}, discarded: map[int64]time.Time{}}
	defer func() {
		if err != nil {
			l.Stop()
		}
	}()
	for w := range o.Runners {
		rc := client
		if o.RunnerDB != nil {
			rdb, err := o.RunnerDB(ctx, w)
			if err != nil {
				return nil, err
			}
			if rc, err = queue.New(rdb, &queue.Config{Schema: o.Schema, Logger: o.Logger}); err != nil {
				return nil, err
			}
			l.clients = append(l.clients, rc)
		}
		name := fmt.Sprintf("runner-%d", w)
		r, err := queue.NewRunner(rc, &queue.RunnerConfig{
			Queue:           o.Queue,
			Concurrency:     o.Concurrency,
			ClaimSize:       o.Concurrency,
			LeaseDuration:   o.Lease,
			PollInterval:    100 * time.Millisecond,
			ReclaimInterval: 200 * time.Millisecond,
			Owner:           name,
			Handler:         l.handler(name),
		})
		if err != nil {
			return nil, err
		}
		if err := r.Start(ctx); err != nil {
			return nil, err
		}
		l.Runners = append(l.Runners, r)
	}
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.stopProd = cancel
	for p := range o.Producers {
		b, err := l.newBuilder(p)
		if err != nil {
			return nil, err
		}
		l.producers.Add(1)
		go l.produce(pctx, p, b)
	}
	return l, nil
}

// Config returns the load's configuration with defaults filled in.
func (l *Load) Config() LoadConfig { return l.cfg }

func (l *Load) handler(name string) queue.HandlerFunc {
	return func(ctx context.Context, b *batch.Batch) error {
		e := &Execution{BatchID: b.ID, Created: b.CreatedAt.UnixMicro(), Key: b.IdempotencyKey,
			Token: b.Lease.Token, Runner: name, Start: time.Now()}
		l.Record(e)
		work := l.cfg.Work
		if l.cfg.LongEvery > 0 && b.Meta.Source.Start/int64(l.cfg.ItemsPerBatch)%int64(l.cfg.LongEvery) == int64(l.cfg.LongEvery)-1 {
			work = l.cfg.LongWork
		}
		t := time.NewTimer(work)
		defer t.Stop()
		var err error
		select {
		case <-t.C:
		case <-ctx.Done():
			err = ctx.Err()
		}
		l.mu.Lock()
		e.End = time.Now()
		e.Done = err == nil
		l.mu.Unlock()
		return err
	}
}

// Record records the start of a handler execution (e.End may be set later under the load's
// lock, through SetEnd).
func (l *Load) Record(e *Execution) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.execs = append(l.execs, e)
	l.waiters = slices.DeleteFunc(l.waiters, func(w *execWaiter) bool {
		if e.Start.After(w.after) {
			w.ch <- e.Start
			return true
		}
		return false
	})
}

// SetEnd records the end of an execution recorded with Record.
func (l *Load) SetEnd(e *Execution, end time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e.End = end
}

func (l *Load) newBuilder(p int) (*batch.Builder[int64], error) {
	return batch.NewBuilder(&batch.BuilderConfig[int64]{
		MaxCount: l.cfg.ItemsPerBatch,
		MaxBytes: math.MaxInt64,
		MaxAge:   time.Hour, // cuts are made by count; the producer paces them
		Flush: func(ctx context.Context, c batch.Cut[int64]) error {
			src := batch.Source{Topic: "orders", Partition: int32(p), Start: c.Items[0], End: c.Items[len(c.Items)-1] + 1}
			at := time.Now()
			_, err := l.Client.Enqueue(ctx, queue.EnqueueParams{Queue: l.cfg.Queue,
				Meta: batch.Meta{Source: src, URI: fmt.Sprintf("s3://events/orders/%d/%d", p, src.Start), EventCount: int64(len(c.Items))}})
			l.mu.Lock()
			defer l.mu.Unlock()
			if err == nil {
				l.acked[src.Key()] = time.Now()
			}
			if ctx.Err() == nil || err == nil {
				l.calls = append(l.calls, EnqueueCall{Producer: p, At: at, Took: time.Since(at), Err: err})
			}
			return err
		},
	})
}

// produce adds ItemsPerBatch offsets per tick, Rate ticks per second; each tick's items form
// one cut, flushed (enqueued) by Add. A failed cut is retried by the next Add.
func (l *Load) produce(ctx context.Context, p int, b *batch.Builder[int64]) {
	defer l.producers.Done()
	defer func() {
		cctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = b.Close(cctx) // no flush: what is not acknowledged by now does not count
	}()
	tick := time.NewTicker(time.Duration(float64(time.Second) / l.cfg.Rate))
	defer tick.Stop()
	var next int64
	for ctx.Err() == nil {
		for range l.cfg.ItemsPerBatch {
			_ = b.Add(ctx, next, 1) // errors are recorded by the flush and retried by the next Add
			next++
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// StopProducers stops the producers and waits for them.
func (l *Load) StopProducers() {
	if l.stopProd != nil {
		l.stopProd()
	}
	l.producers.Wait()
}

// Stop stops producers and runners (cancelling handlers) and closes the clients. It is
// idempotent.
func (l *Load) Stop() {
	l.stopOnce.Do(func() {
		l.StopProducers()
		// In parallel, under one deadline: with no writer (a run that failed
		// mid-fault) each runner gives up on its acknowledgements only then.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		for _, r := range l.Runners {
			wg.Go(func() { _ = r.StopAndCancel(ctx) })
		}
		wg.Wait()
		for _, c := range l.clients {
			_ = c.Close()
		}
	})
}

// Acked returns how many enqueues were acknowledged so far.
func (l *Load) Acked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// EnqueueCalls returns the producers' Enqueue calls that started in [from, to).
func (l *Load) EnqueueCalls(from, to time.Time) []EnqueueCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []EnqueueCall
	for _, c := range l.calls {
		if !c.At.Before(from) && c.At.Before(to) {
			out = append(out, c)
		}
	}
	return out
}

// Executions returns a copy of every execution recorded so far.
func (l *Load) Executions() []Execution {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Execution, len(l.execs))
	for i, e := range l.execs {
		out[i] = *e
	}
	return out
}

// ErrNoRecovery reports that no handler started within LoadConfig.RecoveryLimit of a writer
// becoming reachable.
var ErrNoRecovery = errors.New("faultlab: no handler started within the recovery limit")

// FirstStartAfter waits for the first handler start after t0 and returns how long after t0 it
// was: the recovery time when t0 is the moment a writer became reachable. It fails with
// ErrNoRecovery after LoadConfig.RecoveryLimit.
func (l *Load) FirstStartAfter(ctx context.Context, t0 time.Time) (time.Duration, error) {
	w := &execWaiter{after: t0, ch: make(chan time.Time, 1)}
	l.mu.Lock()
	var first time.Time
	for _, e := range l.execs {
		if e.Start.After(t0) && (first.IsZero() || e.Start.Before(first)) {
			first = e.Start
		}
	}
	if !first.IsZero() {
		l.mu.Unlock()
		return first.Sub(t0), nil
	}
	l.waiters = append(l.waiters, w)
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.waiters = slices.DeleteFunc(l.waiters, func(x *execWaiter) bool { return x == w })
		l.mu.Unlock()
	}()
	t := time.NewTimer(l.cfg.RecoveryLimit)
	defer t.Stop()
	select {
	case at := <-w.ch:
		return at.Sub(t0), nil
	case <-t.C:
		return l.cfg.RecoveryLimit, fmt.Errorf("%w (%s)", ErrNoRecovery, l.cfg.RecoveryLimit)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (l *Load) table(name string) string { return pgx.Identifier{l.cfg.Schema, name}.Sanitize() }

// AckTimes returns when each acknowledged enqueue was acknowledged.
func (l *Load) AckTimes() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]time.Time, 0, len(l.acked))
	for _, at := range l.acked {
		out = append(out, at)
	}
	return out
}
