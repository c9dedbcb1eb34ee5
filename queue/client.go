package queue

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
)

// DB is what a Client needs from a connection pool. A *pgxpool.Pool
// satisfies it, and so does the writer-verified pool of the failover
// package.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
	Begin(ctx context.Context) (pgx.Tx, error)
}

// querier is the part of DB and pgx.Tx the statements run on.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Client enqueues, claims and finishes batches in one schema. It is safe for
// concurrent use; create one per pool and share it.
type Client struct {
	db     DB
	cfg    *Config
	log    *zap.Logger
	sql    *statements
	closed atomic.Bool

	notifyMu sync.Mutex
	notifier *notifier      // started by the first runner that wants wake-ups
	wakes    *wakeCoalescer // coalesced wake-ups of enqueues; nil when they notify in their statement or not at all

	watcher            WriterWatcher           // the DB, when it reports writer changes
	journal            *journal[EnqueueParams] // acknowledged keyed enqueues, when the DB reports writer changes
	done               *journal[Completion]    // completions its runners acknowledged, likewise
	reassertedEnqueues atomic.Int64
	reassertedDone     atomic.Int64
	closing            atomic.Bool

	advanceMu sync.Mutex
	advanced  [4]<-chan struct{} // the writer changes the journals last advanced for

	events *eventSink // nil without Config.OnEvent

	runnersMu sync.Mutex
	runners   map[*Runner]struct{} // started and not yet stopped

	pacesMu sync.Mutex
	paces   map[string]*claimPace // per queue: the sweep below the claim floors, and the floor lag, its runners share
	quit    chan struct{}
	bg      sync.WaitGroup
}

// claimPace returns the claim pace the client's runners of queue share.
func (c *Client) claimPace(queue string) *claimPace {
	c.pacesMu.Lock()
	defer c.pacesMu.Unlock()
	if c.paces == nil {
		c.paces = map[string]*claimPace{}
	}
	p := c.paces[queue]
	if p == nil {
		p = newClaimPace()
		c.paces[queue] = p
	}
	return p
}

// New returns a Client on db. It does not touch the database; tables must
// have been installed with the migrations package. When db reports writer
// changes (WriterWatcher), the client starts two goroutines: one that notes
// each writer change, and one that asserts the journaled enqueues the new
// writer may have lost, retrying until they are asserted or the client is
// closed. New returns an *ArgumentError for an invalid configuration or a
// nil db, including a typed nil such as a nil *pgxpool.Pool.
func New(db DB, cfg *Config) (*Client, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if isNil(db) {
		return nil, argError("new", "db", "nil (%T)", db)
	}
	c := &Client{
		db:   db,
		cfg:  cfg,
		log:  cfg.Logger.Named("skiplock"),
		sql:  newStatements(cfg.Schema),
		quit: make(chan struct{}),
	}
	c.events = newEventSink(cfg.OnEvent, cfg.EventBuffer, c.log.Named("events"))
	if !cfg.DisableNotify && cfg.NotifyInterval > 0 {
		c.wakes = newWakeCoalescer(cfg.NotifyInterval, c.sendWake)
	}
	if w, ok := db.(WriterWatcher); ok && cfg.JournalWindow > 0 {
		c.watcher = w
		c.journal = newJournal[EnqueueParams](cfg.JournalWindow)
		c.done = newJournal[Completion](cfg.JournalWindow)
		c.bg.Add(3)
		go func() {
			defer c.bg.Done()
			changed := w.WriterChanged()
			for {
				select {
				case <-c.quit:
					return
				case <-changed:
				}
				next := w.WriterChanged()
				c.advance(changed)
				changed = next
			}
		}()
		go func() {
			defer c.bg.Done()
			c.journal.assertLoop(c.quit, c.assertEnqueues, func(err error, pending int) {
				c.log.Warn("could not assert journaled enqueues on the current writer; retrying",
					zap.Int("pending", pending), zap.Error(err))
			})
		}()
		go func() {
			defer c.bg.Done()
			c.done.assertLoop(c.quit, c.assertCompletions, func(err error, pending int) {
				c.log.Warn("could not assert journaled completions on the current writer; retrying",
					zap.Int("pending", pending), zap.Error(err))
			})
		}()
	}
	return c, nil
}

// isNil reports whether v is nil or an interface holding a nil pointer,
// map, slice, channel or function.
func isNil(v any) bool {
	if v == nil {
		return true
	}
	switch rv := reflect.ValueOf(v); rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Chan, reflect.Func, reflect.Interface, reflect.UnsafePointer:
		return rv.IsNil()
	}
	return false
}

// sendWake wakes the runners of queues, after their enqueues committed.
// A lost wake-up only delays work until the runners' next poll.
func (c *Client) sendWake(queues []string) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.OpTimeout)
	defer cancel()
	if _, err := c.db.Exec(ctx, c.sql.wake, c.sql.channel, queues); err != nil {
		c.log.Warn("could not wake runners after an enqueue", zap.Int("queues", len(queues)), zap.Error(err))
	}
}

// ReassertedEnqueues returns how many journaled enqueues a new writer was
// missing after a failover and got again (see Config.JournalWindow).
func (c *Client) ReassertedEnqueues() int64 { return c.reassertedEnqueues.Load() }

// JournalStats describes a Client's journal of acknowledged keyed enqueues.
type JournalStats struct {
	// Journaled is how many acknowledged keyed enqueues the journal holds.
	Journaled int
	// Pending is how many of them a writer change left to be asserted on
	// the current writer and are not yet: while it is above zero, those
	// batches exist for sure only in this process's memory.
	Pending int
	// Reasserted is how many journaled enqueues a new writer was missing
	// and got again, since the client was created.
	Reasserted int64
	// Completions and PendingCompletions are the same for the completions
	// the client's runners acknowledged; ReassertedCompletions counts those
	// a new writer was missing and got again. While completions are pending
	// after a writer change, the client's runners hold back new claims (up
	// to 5 s), so that a batch finished on a discarded
	// writer is recorded before it can be claimed again.
	Completions, PendingCompletions int
	ReassertedCompletions           int64
}

// JournalStats returns the state of the client's journal. It does not
// block on the database.
func (c *Client) JournalStats() JournalStats {
	n, pending := c.journal.counts()
	dn, dpending := c.done.counts()
	return JournalStats{Journaled: n, Pending: pending, Reasserted: c.reassertedEnqueues.Load(),
		Completions: dn, PendingCompletions: dpending, ReassertedCompletions: c.reassertedDone.Load()}
}

// Close stops the client's LISTEN connection and its writer watcher, and
// sends the coalesced wake-ups still pending (Config.NotifyInterval).
// Operations after Close return ErrClosed; runners must be stopped first.
// Close does not close the DB. A second Close is a no-op.
//
// If a writer change left journaled enqueues or completions not yet
// asserted on the current writer, Close first tries to assert them (the
// enqueues first), for up to Config.RetryWindow in all (Config.OpTimeout
// with NoRetry), and returns an error matching ErrNotReasserted that says
// how many it could not. Enqueues it could not assert were acknowledged by
// a writer that has since been replaced and may be lost: re-enqueue them
// (their idempotency keys make that safe). Completions it could not assert
// only mean those batches may run again.
func (c *Client) Close() error {
	if c.closing.Swap(true) {
		return nil
	}
	var err error
	if n := c.stopRunners(); n > 0 {
		c.log.Warn("Close stopped runners that were still running; stop runners before closing their client", zap.Int("runners", n))
	}
	window := c.cfg.RetryWindow
	if window <= 0 {
		window = c.cfg.OpTimeout
	}
	// One window for both re-assertions, so Close takes at most that long.
	ctx, cancel := context.WithTimeout(context.Background(), window)
	if _, pending := c.journal.counts(); pending > 0 {
		// Enqueues first: a batch missing from the writer is lost, a
		// completion missing from it only runs again.
		if n := c.journal.flush(ctx, c.assertEnqueues); n > 0 {
			err = fmt.Errorf("close: %d acknowledged keyed enqueues could not be asserted on the current writer: %w", n, ErrNotReasserted)
			c.log.Error("closing with journaled enqueues not asserted on the current writer", zap.Int("pending", n))
		}
	}
	if _, pending := c.done.counts(); pending > 0 {
		if n := c.done.flush(ctx, c.assertCompletions); n > 0 {
			err = errors.Join(err, fmt.Errorf("close: %d completions acknowledged by a replaced writer could not be asserted on the current one; those batches may run again: %w", n, ErrNotReasserted))
			c.log.Error("closing with journaled completions not asserted on the current writer", zap.Int("pending", n))
		}
	}
	cancel()
	c.closed.Store(true)
	close(c.quit)
	c.bg.Wait()
	if c.wakes != nil {
		c.wakes.close()
	}
	c.notifyMu.Lock()
	n := c.notifier
	c.notifier = nil
	c.notifyMu.Unlock()
	if n != nil {
		n.stop()
	}
	c.events.close()
	return err
}

// EventStats returns what became of the events given to Config.OnEvent:
// all zero without it. It does not block.
func (c *Client) EventStats() EventStats { return c.events.stats() }

func (c *Client) check(op string) error {
	if c.closed.Load() {
		return fmt.Errorf("%s: %w", op, ErrClosed)
	}
	return nil
}

// writerChanged returns the channel that is closed at the next writer
// change, or nil without a journal.
func (c *Client) writerChanged() <-chan struct{} {
	if c.journal == nil {
		return nil
	}
	return c.watcher.WriterChanged()
}

// opContext bounds one round trip by OpTimeout.
func (c *Client) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.cfg.OpTimeout)
}

// channel is the NOTIFY channel, or nil when wake-ups are disabled.
func (c *Client) channel() any {
	if c.cfg.DisableNotify {
		return nil
	}
	return c.sql.channel
}

// enqueueChannel is the NOTIFY channel an enqueue statement notifies on
// itself: inside a caller's transaction, or when wake-ups are not
// coalesced; nil otherwise (the client wakes the runners after the commit).
func (c *Client) enqueueChannel(inTx bool) any {
	if c.wakes != nil && !inTx {
		return nil
	}
	return c.channel()
}

// Ref identifies one claim of a batch: its id and the lease token the claim
// got. Complete, Fail, Extend and Release take Refs.
type Ref struct {
	ID    int64
	Token int64
}

// RefOf returns the Ref of a claimed batch.
func RefOf(b *batch.Batch) Ref { return Ref{ID: b.ID, Token: b.Lease.Token} }

// newToken returns a random, non-zero lease token. Tokens are random rather
// than sequential so that one cannot repeat after a failover that lost
// recent commits.
func newToken() int64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic("skiplock: crypto/rand: " + err.Error())
		}
		if t := int64(binary.LittleEndian.Uint64(b[:]) >> 1); t != 0 {
			return t
		}
	}
}

func scanBatch(row pgx.Row, b *batch.Batch) error {
	var (
		state     string
		expiresAt *time.Time
		part      int32
	)
	err := row.Scan(&b.ID, &b.Queue, &state, &b.Priority, &b.Attempt, &b.MaxAttempts, &b.RunAt, &b.CreatedAt,
		&b.Lease.Token, &b.Lease.Owner, &expiresAt,
		&b.IdempotencyKey, &b.PartitionKey, &b.URI,
		&b.Source.Topic, &part, &b.Source.Start,
		&b.Source.End, &b.EventCount, &b.ByteSize, &b.Payload, &b.LastError)
	if err != nil {
		return err
	}
	b.Source.Partition = part
	b.State = batch.State(state)
	if expiresAt != nil {
		b.Lease.ExpiresAt = *expiresAt
	}
	return nil
}

// Get returns the batch with id as it is in the hot table. It returns
// ErrNotFound if no such batch is queued, running or dead (completed batches
// have left the table; see Completed). It is retried across failovers.
func (c *Client) Get(ctx context.Context, id int64) (*batch.Batch, error) {
	if err := c.check("get"); err != nil {
		return nil, err
	}
	var b batch.Batch
	err := c.retry(ctx, "get", true, func(ctx context.Context) error {
		ctx, cancel := c.opContext(ctx)
		defer cancel()
		b = batch.Batch{}
		if err := scanBatch(c.db.QueryRow(ctx, c.sql.get, id), &b); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("get batch %d: %w", id, ErrNotFound)
			}
			return fmt.Errorf("get batch %d: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &b, nil
}

// Completed reports whether a completion of batch id is on record (within
// DoneRetention). It is retried across failovers.
func (c *Client) Completed(ctx context.Context, id int64) (bool, error) {
	if err := c.check("completed"); err != nil {
		return false, err
	}
	var done bool
	err := c.retry(ctx, "completed", true, func(ctx context.Context) error {
		ctx, cancel := c.opContext(ctx)
		defer cancel()
		if err := c.db.QueryRow(ctx, c.sql.done, id).Scan(&done); err != nil {
			return fmt.Errorf("completed %d: %w", id, err)
		}
		return nil
	})
	return done, err
}

// checkTables verifies that the schema's tables exist and can be read. It
// suggests missing migrations only when the server answered with an error
// about the statement itself (an unknown table or schema, a missing
// privilege); a connection that failed or broke, a timeout or no writer is
// reported as it is.
func (c *Client) checkTables(ctx context.Context) error {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	if _, err := c.db.Exec(ctx, c.sql.check); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && failover.Classify(err) == failover.ClassOther {
			return fmt.Errorf("check tables in schema %q (were the migrations applied, and may this role read them?): %w", short(c.cfg.Schema), err)
		}
		return fmt.Errorf("check tables in schema %q: database unusable: %w", short(c.cfg.Schema), err)
	}
	return nil
}

// register notes a started runner, so that Close can stop it.
func (c *Client) register(r *Runner) {
	c.runnersMu.Lock()
	defer c.runnersMu.Unlock()
	if c.runners == nil {
		c.runners = map[*Runner]struct{}{}
	}
	c.runners[r] = struct{}{}
}

// unregister forgets a stopped runner.
func (c *Client) unregister(r *Runner) {
	c.runnersMu.Lock()
	defer c.runnersMu.Unlock()
	delete(c.runners, r)
}

// heldRefs returns the leases that the client's started runners of queue
// (all queues when empty) hold: claimed, and not yet acknowledged. The
// client's own reclaims leave them alone. An expired lease that a live
// runner of this client holds is expired only because that runner could
// not reach a writer (a blackhole, a failover, a stretch with no writer);
// its owner acknowledges, re-confirms or releases it in its next round trip
// once a writer is back, and reclaiming it first would run a batch whose
// handler may already have finished a second time.
func (c *Client) heldRefs(queue string) (ids, tokens []int64) {
	c.runnersMu.Lock()
	rs := make([]*Runner, 0, len(c.runners))
	for r := range c.runners {
		if queue == "" || r.cfg.Queue == queue {
			rs = append(rs, r)
		}
	}
	c.runnersMu.Unlock()
	ids, tokens = []int64{}, []int64{}
	for _, r := range rs {
		r.mu.Lock()
		for ref := range r.inflight {
			ids = append(ids, ref.ID)
			tokens = append(tokens, ref.Token)
		}
		r.mu.Unlock()
	}
	return ids, tokens
}

// stopRunners stops the client's running runners, concurrently, and
// returns how many there were.
func (c *Client) stopRunners() int {
	c.runnersMu.Lock()
	rs := make([]*Runner, 0, len(c.runners))
	for r := range c.runners {
		rs = append(rs, r)
	}
	c.runnersMu.Unlock()
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), c.cfg.OpTimeout)
			defer cancel()
			if err := r.StopAndCancel(ctx); err != nil {
				c.log.Warn("stopping a runner at Close", zap.String("queue", r.cfg.Queue), zap.Error(err))
			}
		}()
	}
	wg.Wait()
	return len(rs)
}

// assertCompletions asserts journaled completions on the current writer.
func (c *Client) assertCompletions(ctx context.Context, cs []Completion) error {
	n, err := c.ReassertCompleted(ctx, cs)
	if err != nil {
		return err
	}
	c.reassertedDone.Add(int64(n))
	lvl := zap.DebugLevel
	if n > 0 {
		lvl = zap.WarnLevel
		if c.events != nil {
			c.events.emit(Event{Kind: EventReassertedCompletions, Count: n})
		}
	}
	c.log.Log(lvl, "asserted journaled completions on the current writer", zap.Int("journaled", len(cs)), zap.Int("restored", n))
	return nil
}

// settling reports whether a writer change left completions to be
// asserted on the current writer; the client's runners check what they
// claim against them meanwhile (see finishedBefore).
func (c *Client) settling() bool {
	_, pending := c.done.counts()
	return pending > 0
}

// advance starts a new epoch of the journals for the writer change that
// closed changed, once: the client's watcher and its runners' claim loops
// (which must not claim on a new writer before the journaled completions
// are pending) all call it.
func (c *Client) advance(changed <-chan struct{}) {
	if c.journal == nil {
		return
	}
	c.advanceMu.Lock()
	defer c.advanceMu.Unlock()
	for _, ch := range c.advanced {
		if ch == changed {
			return // a late caller of an earlier change
		}
	}
	copy(c.advanced[1:], c.advanced[:])
	c.advanced[0] = changed
	c.done.advance()
	c.journal.advance()
}
