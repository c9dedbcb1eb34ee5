package batch

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// Defaults of BuilderConfig.
const (
	// DefaultMaxCount is the default BuilderConfig.MaxCount: items per cut.
	DefaultMaxCount = 1000
	// DefaultMaxBytes is the default BuilderConfig.MaxBytes: 8 MiB per cut.
	DefaultMaxBytes int64 = 8 << 20
	// DefaultMaxAge is the default BuilderConfig.MaxAge.
	DefaultMaxAge = time.Second
)

// ErrClosed is returned by Builder.Add after Builder.Close.
var ErrClosed = errors.New("batch: builder closed")

// FlushReason says why a Builder cut a batch.
type FlushReason int

// The reasons for a cut. The zero FlushReason is not used.
const (
	// ReasonCount: the cut reached BuilderConfig.MaxCount items.
	ReasonCount FlushReason = iota + 1
	// ReasonBytes: the cut reached BuilderConfig.MaxBytes, or the next item
	// would have pushed it past MaxBytes.
	ReasonBytes
	// ReasonAge: the cut's first item was added BuilderConfig.MaxAge ago.
	ReasonAge
	// ReasonFlush: Builder.Flush or Builder.Close was called.
	ReasonFlush
	// ReasonPosition: the next item's position (BuilderConfig.Position)
	// does not continue the pending cut's range: another topic or
	// partition, or an offset before the range's end (a rewind).
	ReasonPosition
)

// String returns "count", "bytes", "age" or "flush", or "FlushReason(n)" for
// other values.
func (r FlushReason) String() string {
	switch r {
	case ReasonCount:
		return "count"
	case ReasonBytes:
		return "bytes"
	case ReasonAge:
		return "age"
	case ReasonFlush:
		return "flush"
	case ReasonPosition:
		return "position"
	}
	return "FlushReason(" + strconv.Itoa(int(r)) + ")"
}

// Cut is one batch of items cut by a Builder and handed to its FlushFunc.
type Cut[T any] struct {
	// Seq numbers the cuts of a Builder: 1 for the first, then one more per
	// cut. A cut whose flush failed is retried with the same Seq and Items.
	Seq uint64
	// Items are the items in the order they were added. The FlushFunc must
	// not modify them (a failed cut is retried with the same slice); it may
	// keep them after returning, the Builder never reuses the slice.
	Items []T
	// Bytes is the sum of the sizes given to Add for Items.
	Bytes int64
	// Reason says why the cut was made.
	Reason FlushReason
	// Started is when the first item was added (BuilderConfig.Now).
	Started time.Time
	// Source is the position range of Items when BuilderConfig.Position is
	// set: the topic and partition of the items, from the first item's Start
	// to the last item's End (gaps between items' positions are inside the
	// range). It is the zero Source without Position.
	Source Source
}

// Key returns the cut's idempotency key, c.Source.Key(), derived from the
// positions of its items only: the same range read again (by this process
// or a restarted one) gives the same key, and different ranges give
// different keys. It returns "" when the cut has no Source (no
// BuilderConfig.Position). Use it, not Seq, as the key of the batch that
// the FlushFunc enqueues: Seq starts at 1 in every Builder, so keys built
// from it collide with the keys of an earlier process within the queue's
// key retention and new cuts are dropped as duplicates.
func (c Cut[T]) Key() string {
	if c.Source.IsZero() {
		return ""
	}
	return c.Source.Key()
}

// FlushFunc delivers a cut, typically by writing its items to object storage
// and enqueueing one batch row that points at them. It returns nil only once
// the cut is durably delivered; on error the Builder keeps the cut and
// retries it later with the same Seq and Items, so delivery is at least once
// and a FlushFunc should be idempotent: derive object keys and idempotency
// keys from the items' positions (Cut.Key, with BuilderConfig.Position), never
// from Seq, which restarts at 1 in every process. Calls are never concurrent
// and come in Seq order. ctx is the context of the Add, Flush or Close that
// triggered the flush, or for age-triggered flushes a context that Close
// cancels if it gives up waiting.
type FlushFunc[T any] func(ctx context.Context, c Cut[T]) error

// FlushError reports a cut that could not be flushed, either because the
// FlushFunc failed or because the context ended before the Builder got to
// it. The cut stays queued and is retried at the next trigger. Its message
// is "batch: flush cut <Seq>: <Err>"; errors.Is and errors.As see through it
// to Err.
type FlushError struct {
	// Seq is the cut that was not flushed.
	Seq uint64
	// Err is the FlushFunc's error or the context's error.
	Err error
}

// Error returns "batch: flush cut <Seq>: <Err>".
func (e *FlushError) Error() string {
	return fmt.Sprintf("batch: flush cut %d: %v", e.Seq, e.Err)
}

// Unwrap returns Err.
func (e *FlushError) Unwrap() error { return e.Err }

// BuilderConfig configures a Builder. Zero numeric fields take their
// defaults; negative ones are refused by NewBuilder.
type BuilderConfig[T any] struct {
	// MaxCount is the most items per cut; a cut that reaches it is flushed.
	// Defaults to DefaultMaxCount (1000).
	MaxCount int
	// MaxBytes is the most bytes (sum of Add's sizes) per cut; a cut that
	// reaches it is flushed, and an item that would push the pending cut past
	// it first flushes what is pending. A single item larger than MaxBytes
	// forms a cut of its own. Use math.MaxInt64 for no byte limit.
	// Defaults to DefaultMaxBytes (8 MiB).
	MaxBytes int64
	// MaxAge bounds how long items wait: a non-empty pending cut is flushed
	// by the Builder's goroutine once its first item is MaxAge old by Now
	// (with time.Now, about MaxAge after it was added). It is also the
	// interval at which that goroutine retries a failed cut. Defaults to
	// DefaultMaxAge (1s).
	MaxAge time.Duration
	// Flush delivers each cut. Required.
	Flush FlushFunc[T]
	// OnError, when set, receives the errors (*FlushError) of flushes run by
	// the Builder's own goroutine (age-triggered flushes and their retries),
	// which have no caller to return them to. It runs in that goroutine and
	// should return quickly. Defaults to nil: such errors are dropped (the
	// cuts are kept and retried all the same).
	OnError func(error)
	// Now is the clock for Cut.Started and for measuring MaxAge; the waiting
	// itself uses real timers. Defaults to time.Now. Meant for tests.
	Now func() time.Time
	// Position, when set, returns where an item was read from: its topic,
	// partition and offsets [Start, End) (End = Start+1 for one Kafka
	// record). Each cut then covers one topic and partition with rising
	// offsets, and gets Cut.Source and Cut.Key from them: an item whose
	// position is in another topic or partition, or starts before the end of
	// the pending range (the log was rewound), first cuts what is pending
	// (ReasonPosition). Add refuses an item whose position does not pass
	// Source.Validate. Defaults to nil: cuts have no Source and no Key.
	//
	// Keys and restarts: a key names an exact range, so a restarted producer
	// gets the keys of its previous run only for cuts with the same
	// boundaries. Boundaries are the same when it resumes at a cut boundary
	// (commit the consumer offset Cut.Source.End after each successful
	// flush, and resume from the committed offset) and the cut is made by
	// MaxCount or MaxBytes over the same items. Age, Flush and Close cuts
	// depend on timing: after a crash between a flush and its offset
	// commit, the re-read range may be cut elsewhere ([100,150) by age
	// before, [100,200) by count after), its key differs, and its items are
	// enqueued again — delivered at least once, never lost. Keys cannot
	// deduplicate overlapping ranges: the queue matches keys exactly, and a
	// key that matched overlapping ranges (say, by start offset alone) would
	// drop the second range's new items as a duplicate of the first. Make
	// handlers idempotent per item position for such overlaps.
	Position PositionFunc[T]
}

// PositionFunc returns the source position of an item; see
// BuilderConfig.Position.
type PositionFunc[T any] func(item T) Source

// WithDefaults returns a copy of c with zero fields set to their defaults. A
// nil c gives all defaults (and no Flush).
func (c *BuilderConfig[T]) WithDefaults() *BuilderConfig[T] {
	var out BuilderConfig[T]
	if c != nil {
		out = *c
	}
	if out.MaxCount == 0 {
		out.MaxCount = DefaultMaxCount
	}
	if out.MaxBytes == 0 {
		out.MaxBytes = DefaultMaxBytes
	}
	if out.MaxAge == 0 {
		out.MaxAge = DefaultMaxAge
	}
	if out.Now == nil {
		out.Now = time.Now
	}
	return &out
}

func (c *BuilderConfig[T]) validate() error {
	switch {
	case c.Flush == nil:
		return invalid("Flush", "required")
	case c.MaxCount < 0:
		return invalid("MaxCount", "negative (%d)", c.MaxCount)
	case c.MaxBytes < 0:
		return invalid("MaxBytes", "negative (%d)", c.MaxBytes)
	case c.MaxAge < 0:
		return invalid("MaxAge", "negative (%s)", c.MaxAge)
	}
	return nil
}

// Builder cuts a stream of items (e.g. events read from Kafka) into batches
// by count, bytes and age, and hands each cut to a FlushFunc. It is safe for
// concurrent use.
//
// Cutting: Add appends an item to the pending cut. If the item would push
// the pending cut past MaxBytes, what is pending is cut first (so cuts stay
// within MaxBytes, except a single oversize item, which is cut alone). When
// the pending cut reaches MaxCount items (reason ReasonCount) or MaxBytes
// bytes (ReasonBytes) it is cut. A pending cut whose first item is MaxAge old
// is cut by the Builder's goroutine (ReasonAge); Flush and Close cut what is
// pending (ReasonFlush).
//
// Flushing: FlushFunc calls run one at a time, in Seq order. The call that
// makes a cut flushes it in its own goroutine and blocks until it is
// flushed (back-pressure), flushing any earlier unflushed cuts first; age
// cuts are flushed in the Builder's goroutine.
//
// No data loss: when the FlushFunc fails, the cut stays queued with the same
// Seq and Items and is retried before any newer cut at the next trigger: the
// next Add, Flush or Close, or the Builder's goroutine MaxAge later. The
// error, a *FlushError naming the cut, is returned to the caller that
// triggered the flush, or given to OnError. Every item accepted by Add is
// either delivered by a successful FlushFunc call or still held (see
// Pending) — at least once: a FlushFunc that fails after a partial delivery
// sees the same cut again.
//
// NewBuilder starts a goroutine for the age trigger; Close stops it.
type Builder[T any] struct {
	cfg BuilderConfig[T] // filled by WithDefaults

	sem  chan struct{} // capacity 1: held while flushing, so FlushFunc calls never overlap
	wake chan struct{} // capacity 1: tells run to recompute its deadline
	stop chan struct{} // closed by the first Close
	done chan struct{} // closed when run returns

	bgCtx    context.Context // context of flushes run by run
	bgCancel context.CancelFunc

	mu      sync.Mutex
	closed  bool
	seq     uint64    // Seq of the last cut made
	items   []T       // the pending cut
	bytes   int64     // its bytes
	started time.Time // when its first item was added
	source  Source    // its position range, with cfg.Position
	lastLen int       // items in the previous cut, to size the next slice

	ready      []Cut[T] // cuts made but not yet flushed successfully, in Seq order
	readyItems int
	readyBytes int64
	failedAt   time.Time // when flushing ready[0] last failed; zero if it has not
}

// NewBuilder returns a Builder configured by cfg (see BuilderConfig for the
// defaults) and starts its age goroutine; call Close to stop it. It does not
// block. It returns a *ValidationError naming the field (e.g. "Flush",
// "MaxCount") when cfg is nil, cfg.Flush is nil or a limit is negative.
func NewBuilder[T any](cfg *BuilderConfig[T]) (*Builder[T], error) {
	c := cfg.WithDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	b := &Builder[T]{
		cfg:  *c,
		sem:  make(chan struct{}, 1),
		wake: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	b.bgCtx, b.bgCancel = context.WithCancel(context.Background())
	go b.run()
	return b, nil
}

// Add adds item, of size bytes (used only for the MaxBytes limit; >= 0), to
// the pending cut, cutting as described on Builder. When Add makes a cut, or
// an earlier cut failed and is still queued, Add flushes in the caller's
// goroutine and blocks until the cuts up to its own are flushed, with ctx
// passed to the FlushFunc; otherwise it returns at once.
//
// Whether the item was accepted follows from the error alone:
//   - nil: accepted (and any cut Add made is flushed).
//   - *FlushError (use errors.As): accepted and held, but a cut could not be
//     flushed (the FlushFunc failed, or ctx ended while waiting); it will be
//     retried. Do not add the item again; call Flush to retry.
//   - a *ValidationError (Field "size") for a negative size, or (Field
//     "position") for an item whose BuilderConfig.Position is not a valid
//     Source, ErrClosed after
//     Close (even with a done ctx), or ctx.Err() when ctx is already done on
//     entry: not accepted.
//
// While flushes keep failing, Add keeps accepting items (and retrying), so
// the Builder's memory grows; back off on errors (see Pending).
func (b *Builder[T]) Add(ctx context.Context, item T, size int64) error {
	if size < 0 {
		return invalid("size", "negative (%d)", size)
	}
	var pos Source
	if b.cfg.Position != nil {
		pos = b.cfg.Position(item)
		if err := pos.Validate(); err != nil {
			var ve *ValidationError
			if errors.As(err, &ve) {
				return invalid("position", "%s", ve.Reason)
			}
			return invalid("position", "%v", err)
		}
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		b.mu.Unlock()
		return err
	}
	var target uint64 // flush cuts up to this Seq; 0 for none
	if len(b.items) > 0 && b.cfg.Position != nil && !b.source.continuedBy(pos) {
		target = b.cutLocked(ReasonPosition)
	}
	if len(b.items) > 0 && size > b.cfg.MaxBytes-b.bytes {
		target = b.cutLocked(ReasonBytes)
	}
	first := len(b.items) == 0
	if first {
		b.started = b.cfg.Now()
		if b.items == nil {
			b.items = make([]T, 0, b.lastLen)
		}
	}
	b.items = append(b.items, item)
	b.bytes += size
	if b.cfg.Position != nil {
		if first {
			b.source = pos
		} else {
			b.source.End = pos.End
		}
	}
	switch {
	case len(b.items) >= b.cfg.MaxCount:
		target = b.cutLocked(ReasonCount)
	case b.bytes >= b.cfg.MaxBytes:
		target = b.cutLocked(ReasonBytes)
	}
	if target == 0 && !b.failedAt.IsZero() && len(b.ready) > 0 {
		target = b.ready[len(b.ready)-1].Seq // retry what failed, and what followed
	}
	wake := first && len(b.items) > 0
	b.mu.Unlock()
	if wake {
		b.signal()
	}
	if target == 0 {
		return nil
	}
	return b.flushUpTo(ctx, target)
}

// Flush cuts what is pending (ReasonFlush) and flushes every cut made so far,
// including earlier failed ones, in the caller's goroutine with ctx passed to
// the FlushFunc. It blocks until they are flushed, or until one fails or ctx
// ends; then it returns a *FlushError and the unflushed cuts stay queued for
// a later retry. When Flush returns nil, every item accepted before the call
// has been delivered. A ctx already done on entry gives ctx.Err() and changes
// nothing. Flush also works after Close, to retry what Close could not flush.
func (b *Builder[T]) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	if len(b.items) > 0 {
		b.cutLocked(ReasonFlush)
	}
	target := b.lastReadyLocked()
	b.mu.Unlock()
	if target == 0 {
		return nil
	}
	return b.flushUpTo(ctx, target)
}

// Close stops the Builder: later Adds return ErrClosed. It cuts what is
// pending (ReasonFlush), stops the age goroutine, and flushes every queued
// cut like Flush, blocking until done or ctx ends.
//
// It returns nil when everything was flushed and the goroutine has exited.
// Otherwise it returns a *FlushError (a cut failed, or ctx ended while
// waiting to flush) or ctx.Err() (ctx ended while waiting for the
// goroutine); if ctx ended while an age flush was running, that flush's
// context is cancelled. The Builder stays closed with the unflushed cuts
// held and nothing retries them on its own: call Close (or Flush) again.
// Close is idempotent; a Close after a successful one returns nil. A ctx
// already done on entry still closes the Builder and returns ctx.Err()
// without flushing.
func (b *Builder[T]) Close(ctx context.Context) error {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		if len(b.items) > 0 {
			b.cutLocked(ReasonFlush)
		}
		close(b.stop)
	}
	target := b.lastReadyLocked()
	b.mu.Unlock()

	if err := ctx.Err(); err != nil {
		b.giveUp()
		return err
	}
	var err error
	if target != 0 {
		err = b.flushUpTo(ctx, target)
	}
	select {
	case <-b.done:
		b.bgCancel() // release the context; run has exited
	case <-ctx.Done():
		b.giveUp()
		if err == nil {
			err = ctx.Err()
		}
	}
	return err
}

// giveUp cancels the context of a running age flush unless run has exited.
func (b *Builder[T]) giveUp() {
	select {
	case <-b.done:
	default:
		b.bgCancel()
	}
}

// Pending returns the number of items and their bytes that were accepted by
// Add but not yet flushed successfully: the pending cut plus cuts waiting to
// be flushed, being flushed, or kept after a failed flush. It does not block
// on flushes.
func (b *Builder[T]) Pending() (items int, bytes int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.items) + b.readyItems, b.bytes + b.readyBytes
}

// cutLocked turns the pending cut into a queued cut and returns its Seq.
// b.mu must be held and the pending cut non-empty.
func (b *Builder[T]) cutLocked(reason FlushReason) uint64 {
	b.seq++
	b.ready = append(b.ready, Cut[T]{
		Seq:     b.seq,
		Items:   b.items,
		Bytes:   b.bytes,
		Reason:  reason,
		Started: b.started,
		Source:  b.source,
	})
	b.readyItems += len(b.items)
	b.readyBytes += b.bytes
	b.lastLen = min(len(b.items), b.cfg.MaxCount)
	b.items, b.bytes, b.started, b.source = nil, 0, time.Time{}, Source{}
	return b.seq
}

// continuedBy reports whether an item at position p can join a pending cut
// whose range is s: same topic and partition, at or after its end.
func (s Source) continuedBy(p Source) bool {
	return p.Topic == s.Topic && p.Partition == s.Partition && p.Start >= s.End
}

// lastReadyLocked returns the Seq of the newest queued cut, or 0.
func (b *Builder[T]) lastReadyLocked() uint64 {
	if len(b.ready) == 0 {
		return 0
	}
	return b.ready[len(b.ready)-1].Seq
}

// flushUpTo flushes the queued cuts with Seq <= target, oldest first, one
// FlushFunc call at a time across the Builder. It returns nil when none of
// them is left, or a *FlushError for the first cut it could not flush.
func (b *Builder[T]) flushUpTo(ctx context.Context, target uint64) error {
	select {
	case b.sem <- struct{}{}:
	case <-ctx.Done():
		return &FlushError{Seq: target, Err: ctx.Err()}
	}
	defer func() { <-b.sem }()
	for {
		b.mu.Lock()
		if len(b.ready) == 0 || b.ready[0].Seq > target {
			b.mu.Unlock()
			return nil
		}
		c := b.ready[0]
		b.mu.Unlock()

		if err := ctx.Err(); err != nil {
			return &FlushError{Seq: c.Seq, Err: err}
		}
		// Only the holder of sem removes cuts, so ready[0] is still c below.
		if err := b.cfg.Flush(ctx, c); err != nil {
			b.mu.Lock()
			b.failedAt = b.cfg.Now()
			b.mu.Unlock()
			b.signal() // let run schedule a retry
			return &FlushError{Seq: c.Seq, Err: err}
		}
		b.mu.Lock()
		b.ready[0] = Cut[T]{} // drop the reference to the items
		b.ready = b.ready[1:]
		if len(b.ready) == 0 {
			b.ready = nil
		}
		b.readyItems -= len(c.Items)
		b.readyBytes -= c.Bytes
		b.failedAt = time.Time{}
		b.mu.Unlock()
	}
}

// signal wakes run without blocking.
func (b *Builder[T]) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// run is the Builder's goroutine: it sleeps until the pending cut is MaxAge
// old or a failed cut is due for a retry, then flushes. With nothing pending
// and nothing failed it waits for a wake-up without a timer.
//
// It never spins: a tick that finds nothing due (possible only when Now
// disagrees with the timers, e.g. a coarse or stopped clock) makes the next
// wait a full MaxAge.
func (b *Builder[T]) run() {
	defer close(b.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	idle := false // the last tick found nothing due
	for {
		d, ok := b.nextWait()
		if !ok {
			select {
			case <-b.stop:
				return
			case <-b.wake:
				idle = false
				continue
			}
		}
		if idle {
			d = b.cfg.MaxAge
		}
		timer.Reset(d)
		select {
		case <-b.stop:
			return
		case <-b.wake:
			timer.Stop()
			idle = false
		case <-timer.C:
			idle = !b.tick()
		}
	}
}

// nextWait returns how long run should sleep before the next tick, and false
// when there is nothing to wait for.
func (b *Builder[T]) nextWait() (time.Duration, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var due time.Time
	if len(b.items) > 0 {
		due = b.started.Add(b.cfg.MaxAge)
	}
	if !b.failedAt.IsZero() && len(b.ready) > 0 {
		if retry := b.failedAt.Add(b.cfg.MaxAge); due.IsZero() || retry.Before(due) {
			due = retry
		}
	}
	if due.IsZero() {
		return 0, false
	}
	// Clamp, so that a clock that jumps cannot make run sleep too long.
	return min(max(due.Sub(b.cfg.Now()), 0), b.cfg.MaxAge), true
}

// tick cuts the pending cut if it is MaxAge old, and flushes when it cut or
// when a failed cut is queued. It reports whether it found anything to do.
func (b *Builder[T]) tick() bool {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return true // Close flushes; run is about to stop
	}
	cut := len(b.items) > 0 && b.cfg.Now().Sub(b.started) >= b.cfg.MaxAge
	if cut {
		b.cutLocked(ReasonAge)
	}
	var target uint64
	if cut || !b.failedAt.IsZero() {
		target = b.lastReadyLocked()
	}
	b.mu.Unlock()
	if target == 0 {
		return false
	}
	if err := b.flushUpTo(b.bgCtx, target); err != nil && b.cfg.OnError != nil {
		b.cfg.OnError(err)
	}
	return true
}
