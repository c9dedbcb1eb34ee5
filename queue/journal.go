package queue

import (
	"context"
	"errors"
	"sync"
	"time"

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

// A journal remembers acknowledged work (keyed enqueues of a Client,
// completions of a Runner) so that it can be asserted again on a new writer
// that may have lost it: with asynchronous replication a promoted replica
// can miss the last commits of the old writer.
//
// What is at risk at a writer change is what the old writer acknowledged
// last, so the window is measured back from the newest acknowledgement in
// the journal, not from the moment the change is detected: no work is
// acknowledged while no writer is reachable, however long detection takes.
// advance marks every entry within the window of that newest
// acknowledgement as pending; pending entries are asserted by the journal's
// asserter until an assertion succeeds within one epoch (no further writer
// change while it ran), and are never trimmed before that. An assertion
// counts as a fresh acknowledgement on the writer that took it.
//
// The epoch counts writer changes: an operation notes the epoch before it
// sends anything, and when it journals its acknowledged items learns
// whether a change happened in between (it straddled the change). Its items
// are then pending at once, since the change's advance may have run before
// they were journaled.
type journal[T any] struct {
	mu      sync.Mutex
	window  time.Duration
	max     int // bound on entries that are not pending
	epoch   int64
	seq     uint64
	entries []journalEntry[T] // in order of at
	pending int
	kick    chan struct{} // wakes the asserter; capacity 1
}

type journalEntry[T any] struct {
	seq     uint64
	at      time.Time // last acknowledgement (or assertion)
	item    T
	pending bool
}

// journalMax bounds a journal's settled entries whatever the rate. Pending
// entries are acknowledged work not yet asserted and are never dropped.
const journalMax = 1 << 20

func newJournal[T any](window time.Duration) *journal[T] {
	if window <= 0 {
		return nil
	}
	return &journal[T]{window: window, max: journalMax, kick: make(chan struct{}, 1)}
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

// add journals items acknowledged by an operation that started in epoch
// since. It reports whether a writer change happened in between — the
// epoch moved on, or the operation saw the change itself (changed) before
// the watcher advanced the epoch — in which case the items are pending (to
// be asserted on the current writer), and returns the entries' sequence
// numbers for settle.
func (j *journal[T]) add(since int64, changed bool, items ...T) (straddled bool, seqs []uint64) {
	if j == nil || len(items) == 0 {
		return false, nil
	}
	now := time.Now()
	j.mu.Lock()
	defer j.mu.Unlock()
	straddled = changed || j.epoch != since
	j.trim(now)
	if straddled {
		seqs = make([]uint64, 0, len(items))
	}
	for _, it := range items {
		j.seq++
		j.entries = append(j.entries, journalEntry[T]{seq: j.seq, at: now, item: it, pending: straddled})
		if straddled {
			seqs = append(seqs, j.seq)
		}
	}
	if straddled {
		j.pending += len(items)
		wakeUp(j.kick)
	}
	j.bound()
	return straddled, seqs
}

// trim drops settled entries acknowledged more than the window before now.
// Entries are in order of acknowledgement; trimming stops at the first
// pending one.
func (j *journal[T]) trim(now time.Time) {
	cut := 0
	for cut < len(j.entries) && !j.entries[cut].pending && now.Sub(j.entries[cut].at) > j.window {
		cut++
	}
	if cut > 0 {
		j.entries = append(j.entries[:0], j.entries[cut:]...)
	}
}

// bound drops the oldest settled entries beyond max.
func (j *journal[T]) bound() {
	over := len(j.entries) - j.pending - j.max
	if over <= 0 {
		return
	}
	kept := j.entries[:0]
	for _, e := range j.entries {
		if over > 0 && !e.pending {
			over--
			continue
		}
		kept = append(kept, e)
	}
	clear(j.entries[len(kept):])
	j.entries = kept
}

// advance starts a new epoch after a writer change: every entry
// acknowledged within the window before the newest acknowledgement becomes
// pending, older settled entries are dropped, and the asserter is woken.
// It never blocks on the database, so a watcher calling it misses no change.
func (j *journal[T]) advance() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.epoch++
	if len(j.entries) == 0 {
		return
	}
	var newest time.Time
	for _, e := range j.entries {
		if e.at.After(newest) {
			newest = e.at
		}
	}
	from := newest.Add(-j.window)
	kept := j.entries[:0]
	for _, e := range j.entries {
		switch {
		case e.pending:
		case !e.at.Before(from):
			e.pending = true
			j.pending++
		default:
			continue
		}
		kept = append(kept, e)
	}
	clear(j.entries[len(kept):])
	j.entries = kept
	if j.pending > 0 {
		wakeUp(j.kick)
	}
}

// takePending returns up to limit pending items, their sequence numbers and
// the epoch they are taken in.
func (j *journal[T]) takePending(limit int) (items []T, seqs []uint64, epoch int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, e := range j.entries {
		if len(items) == limit {
			break
		}
		if e.pending {
			items = append(items, e.item)
			seqs = append(seqs, e.seq)
		}
	}
	return items, seqs, j.epoch
}

// settle marks the entries seqs as asserted on the writer of epoch, now. If
// the writer changed since (the epoch moved on), the assertion may have
// gone to a writer that is gone too, and they stay pending.
func (j *journal[T]) settle(seqs []uint64, epoch int64) (settled bool) {
	if len(seqs) == 0 {
		return true
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.epoch != epoch {
		return false
	}
	want := make(map[uint64]bool, len(seqs))
	for _, s := range seqs {
		want[s] = true
	}
	// Asserted entries move to the end with a fresh time, keeping the
	// entries in order of acknowledgement.
	now := time.Now()
	kept := j.entries[:0]
	var moved []journalEntry[T]
	for _, e := range j.entries {
		if e.pending && want[e.seq] {
			e.pending = false
			e.at = now
			j.pending--
			moved = append(moved, e)
			continue
		}
		kept = append(kept, e)
	}
	j.entries = append(kept, moved...)
	return true
}

// counts returns how many entries the journal holds and how many of them
// are pending.
func (j *journal[T]) counts() (entries, pending int) {
	if j == nil {
		return 0, 0
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.entries), j.pending
}

// journalChunk is how many pending items one assertion sends.
const journalChunk = MaxEnqueueBatchRows

// assertLoop asserts the journal's pending entries with assert until stop
// is closed: after each writer change, after each straddling operation,
// and again with backoff while an assertion fails. It gives up on nothing:
// pending entries stay pending (and counted) until an assertion succeeds.
// onErr reports failed attempts.
func (j *journal[T]) assertLoop(stop <-chan struct{}, assert func(ctx context.Context, items []T) error, onErr func(err error, pending int)) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	// Short waits: pending completions are work done that a new writer may
	// hand out again (see finishedBefore), and the pool itself paces attempts
	// while no writer is reachable (it waits WriterWait in each).
	bo := newBackOff(25*time.Millisecond, 250*time.Millisecond)
	for {
		select {
		case <-stop:
			return
		case <-j.kick:
		}
		for ctx.Err() == nil {
			items, seqs, epoch := j.takePending(journalChunk)
			if len(items) == 0 {
				bo.Reset()
				break
			}
			err := assert(ctx, items)
			if err == nil {
				j.settle(seqs, epoch)
				continue
			}
			if ctx.Err() != nil || errors.Is(err, ErrClosed) || errors.Is(err, failover.ErrClosed) {
				return
			}
			_, pending := j.counts()
			onErr(err, pending)
			t := time.NewTimer(bo.NextBackOff())
			select {
			case <-stop:
				t.Stop()
				return
			case <-t.C:
			case <-j.kick: // a writer change: try the new writer now
				t.Stop()
				bo.Reset()
			}
		}
	}
}

// flush asserts what is pending once more, within ctx, and returns how many
// entries are still pending afterwards.
func (j *journal[T]) flush(ctx context.Context, assert func(ctx context.Context, items []T) error) int {
	for ctx.Err() == nil {
		items, seqs, epoch := j.takePending(journalChunk)
		if len(items) == 0 {
			break
		}
		if err := assert(ctx, items); err != nil {
			break
		}
		if !j.settle(seqs, epoch) {
			continue
		}
	}
	_, pending := j.counts()
	return pending
}

// closed reports whether ch is closed (false for nil).
func closed(ch <-chan struct{}) bool {
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// watchWriter calls f after every writer change until stop is closed. It
// takes the next change's channel before calling f, and f must not block,
// so no change goes unseen.
func watchWriter(w WriterWatcher, stop <-chan struct{}, f func()) {
	changed := w.WriterChanged()
	for {
		select {
		case <-stop:
			return
		case <-changed:
		}
		changed = w.WriterChanged()
		select {
		case <-stop:
			return
		default:
		}
		f()
	}
}
