package queue

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// pendingItems returns the pending items of j, in journal order.
func pendingItems(j *journal[int]) []int {
	items, _, _ := j.takePending(1 << 30)
	return items
}

// backdate moves every entry's acknowledgement d into the past, as if the
// journal had been filled d ago.
func backdate(j *journal[int], d time.Duration) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for i := range j.entries {
		j.entries[i].at = j.entries[i].at.Add(-d)
	}
}

func TestJournalWindowIsMeasuredFromTheLastAcknowledgement(t *testing.T) {
	j := newJournal[int](time.Second)
	j.add(0, false, 1, 2, 3)
	// Detection comes long after the last acknowledgement (a slow endpoint
	// move): nothing was acknowledged meanwhile, so all three are at risk.
	backdate(j, time.Minute)
	j.advance()
	require.Equal(t, []int{1, 2, 3}, pendingItems(j))
}

func TestJournalAdvanceKeepsOnlyTheWindowBeforeTheNewest(t *testing.T) {
	j := newJournal[int](time.Second)
	j.add(0, false, 1, 2)
	backdate(j, 5*time.Second) // 1 and 2 were acknowledged 5 s before 3
	j.add(0, false, 3)
	j.advance()
	require.Equal(t, []int{3}, pendingItems(j))
	n, pending := j.counts()
	require.Equal(t, 1, n, "entries older than the window before the newest are dropped")
	require.Equal(t, 1, pending)
}

func TestJournalStraddleIsPendingAtOnce(t *testing.T) {
	j := newJournal[int](time.Second)
	since := j.epochNow()
	j.advance() // a writer change while the operation ran
	straddled, seqs := j.add(since, false, 7, 8)
	require.True(t, straddled)
	require.Len(t, seqs, 2)
	require.Equal(t, []int{7, 8}, pendingItems(j))
	select {
	case <-j.kick:
	default:
		t.Fatal("a straddling add must wake the asserter")
	}
	straddled, _ = j.add(j.epochNow(), false, 9)
	require.False(t, straddled)
	require.Equal(t, []int{7, 8}, pendingItems(j))
	// A change the operation saw before the watcher advanced the epoch.
	straddled, _ = j.add(j.epochNow(), true, 10)
	require.True(t, straddled)
	require.Equal(t, []int{7, 8, 10}, pendingItems(j))
}

func TestJournalPendingIsNeverTrimmedOrBounded(t *testing.T) {
	j := newJournal[int](time.Millisecond)
	j.max = 2
	j.add(0, false, 1, 2)
	j.advance()
	backdate(j, time.Hour)
	j.add(j.epochNow(), false, 3, 4, 5) // trims and bounds settled entries only
	require.Equal(t, []int{1, 2}, pendingItems(j))
	n, pending := j.counts()
	require.Equal(t, 2, pending)
	require.Equal(t, 4, n, "two pending plus at most max settled")
}

func TestJournalSettleNeedsTheSameEpoch(t *testing.T) {
	j := newJournal[int](time.Second)
	j.add(0, false, 1, 2)
	j.advance()
	backdate(j, time.Hour) // acknowledged long ago, then asserted below
	items, seqs, epoch := j.takePending(10)
	require.Equal(t, []int{1, 2}, items)
	j.advance() // flip back while the assertion ran
	require.False(t, j.settle(seqs, epoch), "an assertion that straddled another change proves nothing")
	require.Equal(t, []int{1, 2}, pendingItems(j))

	items, seqs, epoch = j.takePending(10)
	require.Len(t, items, 2)
	require.True(t, j.settle(seqs, epoch))
	_, pending := j.counts()
	require.Zero(t, pending)

	// Asserted entries count as fresh acknowledgements on the writer that
	// took them: if that writer is replaced too, they are at risk again.
	j.add(j.epochNow(), false, 3)
	j.advance()
	require.ElementsMatch(t, []int{1, 2, 3}, pendingItems(j))
}

func TestJournalAssertLoopRetriesUntilItSucceeds(t *testing.T) {
	j := newJournal[int](time.Second)
	j.add(0, false, 1, 2, 3)
	var calls atomic.Int32
	var mu sync.Mutex
	var got []int
	assert := func(_ context.Context, items []int) error {
		if calls.Add(1) <= 3 {
			return errors.New("no writer available")
		}
		mu.Lock()
		got = append(got, items...)
		mu.Unlock()
		return nil
	}
	var failures atomic.Int32
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		j.assertLoop(stop, assert, func(error, int) { failures.Add(1) })
	}()
	j.advance()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, pending := j.counts(); pending == 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "pending entries were not asserted")
		time.Sleep(5 * time.Millisecond) // polling a condition, not waiting for readiness
	}
	close(stop)
	<-done
	require.EqualValues(t, 3, failures.Load())
	mu.Lock()
	require.Equal(t, []int{1, 2, 3}, got)
	mu.Unlock()
}

func TestJournalFlushReportsWhatStaysPending(t *testing.T) {
	j := newJournal[int](time.Second)
	j.add(0, false, 1, 2)
	j.advance()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	n := j.flush(ctx, func(context.Context, []int) error { return errors.New("no writer") })
	require.Equal(t, 2, n)
	n = j.flush(ctx, func(context.Context, []int) error { return nil })
	require.Zero(t, n)
}

// changer is a WriterWatcher whose changes the test drives.
type changer struct {
	mu   sync.Mutex
	ch   chan struct{}
	subs chan struct{} // receives a value whenever WriterChanged is called
}

func (c *changer) WriterChanged() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case c.subs <- struct{}{}:
	default:
	}
	return c.ch
}

func (c *changer) change() {
	c.mu.Lock()
	defer c.mu.Unlock()
	close(c.ch)
	c.ch = make(chan struct{})
}

func TestWatchWriterSeesChangesDuringItsCallback(t *testing.T) {
	w := &changer{ch: make(chan struct{}), subs: make(chan struct{}, 1)}
	stop := make(chan struct{})
	calls := make(chan int, 10)
	n := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchWriter(w, stop, func() {
			n++
			if n == 1 {
				w.change() // the writer flips back while the first change is handled
			}
			calls <- n
		})
	}()
	<-w.subs // the watcher holds the channel of the next change
	w.change()
	require.Equal(t, 1, <-calls)
	select {
	case got := <-calls:
		require.Equal(t, 2, got)
	case <-time.After(5 * time.Second):
		t.Fatal("a writer change during the callback was missed")
	}
	close(stop)
	<-done
}
