package queue

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/skiplock/skiplock/failover"
)

// WriterWatcher is implemented by a DB that follows the cluster's writer,
// such as the failover package's Pool. WriterChanged returns a channel that
// is closed when the writer it serves changes; the client then reconnects
// its LISTEN connection and asserts recent acknowledged work again on the
// new writer (see Config.JournalWindow).
type WriterWatcher interface {
	WriterChanged() <-chan struct{}
}

// journal remembers recent acknowledged items for a time window. Its epoch
// counts writer changes: an operation notes the epoch when it starts, and
// when it adds its acknowledged items, learns whether a writer change
// happened in between — in which case the snapshot taken at that change may
// have missed them, and the operation asserts them again itself.
type journal[T any] struct {
	mu      sync.Mutex
	window  time.Duration
	max     int
	epoch   int64
	entries []journalEntry[T]
}

// epochNow returns the current epoch (0 for a nil journal).
func (j *journal[T]) epochNow() int64 {
	if j == nil {
		return 0
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.epoch
}

// advance starts a new epoch and returns what the journal holds, in one
// step, so an add either lands in this snapshot or sees the new epoch.
func (j *journal[T]) advance() []T {
	j.mu.Lock()
	j.epoch++
	j.mu.Unlock()
	return j.snapshot()
}

type journalEntry[T any] struct {
	at   time.Time
	item T
}

// journalMax bounds a journal's memory whatever the rate.
const journalMax = 1 << 20

func newJournal[T any](window time.Duration) *journal[T] {
	if window <= 0 {
		return nil
	}
	return &journal[T]{window: window, max: journalMax}
}

// add journals items acknowledged by an operation that started in epoch
// since, and reports whether a writer change happened in between.
func (j *journal[T]) add(since int64, items ...T) (straddled bool) {
	if j == nil || len(items) == 0 {
		return false
	}
	now := time.Now()
	j.mu.Lock()
	defer j.mu.Unlock()
	straddled = j.epoch != since
	j.trim(now)
	for _, it := range items {
		j.entries = append(j.entries, journalEntry[T]{at: now, item: it})
	}
	if over := len(j.entries) - j.max; over > 0 {
		j.entries = append(j.entries[:0], j.entries[over:]...)
	}
	return straddled
}

// trim drops entries older than the window.
func (j *journal[T]) trim(now time.Time) {
	cut := 0
	for cut < len(j.entries) && now.Sub(j.entries[cut].at) > j.window {
		cut++
	}
	if cut > 0 {
		j.entries = append(j.entries[:0], j.entries[cut:]...)
	}
}

func (j *journal[T]) snapshot() []T {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.trim(time.Now())
	out := make([]T, len(j.entries))
	for i, e := range j.entries {
		out[i] = e.item
	}
	return out
}

// journalEnqueued journals the keyed batches of an acknowledged enqueue
// that started in epoch since, with their effective keys (payloads are kept
// by reference). If the writer changed while the enqueue ran, it asserts
// them on the new writer at once.
func (c *Client) journalEnqueued(ctx context.Context, since int64, ps []EnqueueParams, cols *enqueueColumns) {
	if c.journal == nil || !cols.keyed {
		return
	}
	keyed := make([]EnqueueParams, 0, len(ps))
	for i := range ps {
		if cols.key[i] == "" {
			continue
		}
		p := ps[i]
		p.IdempotencyKey = cols.key[i]
		keyed = append(keyed, p)
	}
	if c.journal.add(since, keyed...) {
		if _, err := c.enqueueMany(ctx, keyed, false); err != nil {
			c.log.Error("could not assert an enqueue that straddled a writer change", zap.Int("batches", len(keyed)), zap.Error(err))
		}
	}
}

// watchWriter runs f after every writer change until stop is closed.
func watchWriter(w WriterWatcher, stop <-chan struct{}, f func()) {
	for {
		changed := w.WriterChanged()
		select {
		case <-stop:
			return
		case <-changed:
		}
		select {
		case <-stop:
			return
		default:
		}
		f()
	}
}

// reassertEnqueues enqueues the journaled keyed batches again; those the
// new writer already has are duplicates and add nothing.
func (c *Client) reassertEnqueues() {
	ps := c.journal.advance()
	if len(ps) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.RetryWindow)
	defer cancel()
	go func() {
		select {
		case <-c.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	res, err := c.enqueueMany(ctx, ps, false)
	if errors.Is(err, failover.ErrClosed) || errors.Is(err, ErrClosed) {
		return // shutting down, not failing over
	}
	if err != nil {
		c.log.Error("could not assert recent enqueues on the new writer", zap.Int("batches", len(ps)), zap.Error(err))
		return
	}
	restored := 0
	for _, r := range res {
		if !r.Duplicate {
			restored++
		}
	}
	c.reassertedEnqueues.Add(int64(restored))
	lvl := zap.InfoLevel
	if restored > 0 {
		lvl = zap.WarnLevel
	}
	c.log.Log(lvl, "asserted recent enqueues on the new writer",
		zap.Int("journaled", len(ps)), zap.Int("restored", restored))
}
