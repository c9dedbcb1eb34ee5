package queue

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
)

func TestClaimCursor(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	b := func(id int64, prio int16, runAt time.Time) batch.Batch {
		return batch.Batch{ID: id, Priority: prio, RunAt: runAt}
	}
	var c claimCursor

	full, _, _ := c.next(t0, false)
	require.True(t, full, "the first claim reads from the head")
	// A full claim that found nothing: the floor is the database's clock,
	// less the lag, at the default priority.
	c.done(nil, t0.Add(time.Hour), time.Millisecond)
	full, p, at := c.next(t0.Add(100*time.Millisecond), false)
	require.False(t, full)
	require.Equal(t, int16(0), p)
	require.Equal(t, t0.Add(time.Hour-claimFloorLagInit), at)

	// A floored claim: the floor moves to the last batch taken (in any
	// order), less the lag.
	c.done([]batch.Batch{b(9, 0, t0.Add(2*time.Hour)), b(7, 0, t0.Add(3*time.Hour)), b(8, 0, t0.Add(2*time.Hour))}, time.Time{}, time.Millisecond)
	_, p, at = c.next(t0.Add(300*time.Millisecond), false)
	require.Equal(t, int16(0), p)
	require.Equal(t, t0.Add(3*time.Hour-claimFloorLagInit), at)

	// It never moves down: not for an older batch (a released one found by a
	// full claim), not for a more urgent one.
	c.done([]batch.Batch{b(3, 0, t0)}, time.Time{}, time.Millisecond)
	c.done([]batch.Batch{b(4, -5, t0.Add(5*time.Hour))}, time.Time{}, time.Millisecond)
	_, p, at = c.next(t0.Add(600*time.Millisecond), false)
	require.Equal(t, int16(0), p)
	require.Equal(t, t0.Add(3*time.Hour-claimFloorLagInit), at)
	// A less urgent priority is further along.
	c.done([]batch.Batch{b(5, 2, t0)}, time.Time{}, time.Millisecond)
	_, p, at = c.next(t0.Add(800*time.Millisecond), false)
	require.Equal(t, int16(2), p)
	require.Equal(t, t0.Add(-claimFloorLagInit), at)

	// A full claim when asked (a reclaim), when due, and after a reset.
	full, _, _ = c.next(t0.Add(900*time.Millisecond), true)
	require.True(t, full, "asked")
	c.done(nil, t0.Add(time.Hour), time.Millisecond)
	full, _, _ = c.next(t0.Add(1800*time.Millisecond), false)
	require.False(t, full, "a full claim ran 0.9 s ago")
	full, _, _ = c.next(t0.Add(1900*time.Millisecond), false)
	require.True(t, full, "due: fullScanMin after the last full claim")
	c.done(nil, time.Time{}, 200*time.Millisecond)
	// A slow full claim (200 ms) spaces the next one out: 50 × 200 ms.
	full, _, _ = c.next(t0.Add(10*time.Second), false)
	require.False(t, full)
	full, _, _ = c.next(t0.Add(11900*time.Millisecond), false)
	require.True(t, full)
	// A full claim of 2 s (an old snapshot's dead entries): 100 s apart.
	c.done(nil, time.Time{}, 2*time.Second)
	full, _, _ = c.next(t0.Add(111800*time.Millisecond), false)
	require.False(t, full, "2 s full claims stay 2 %% of the runner's time")
	full, _, _ = c.next(t0.Add(111900*time.Millisecond), false)
	require.True(t, full)
	c.done(nil, time.Time{}, time.Minute)
	full, _, _ = c.next(t0.Add(111800*time.Millisecond+fullScanMax), false)
	require.False(t, full)
	full, _, _ = c.next(t0.Add(111900*time.Millisecond+fullScanMax), false)
	require.True(t, full, "never further apart than fullScanMax")
	c.reset()
	full, _, _ = c.next(t0.Add(111901*time.Millisecond+fullScanMax), false)
	require.True(t, full, "after a reset")
}

// TestClaimFloorLagAdapts: a full claim that finds a first claim below the
// floor (an enqueue slower than the lag) doubles the lag; one that finds
// none shortens it; a batch claimed before (released, reclaimed) does not
// count.
func TestClaimFloorLagAdapts(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	var c claimCursor
	c.next(t0, false)
	c.done([]batch.Batch{{ID: 1, RunAt: t0, Attempt: 1}}, time.Time{}, time.Millisecond)
	_, _, at := c.next(t0.Add(time.Millisecond), false)
	require.Equal(t, t0.Add(-claimFloorLagInit), at)

	full, _, _ := c.next(t0.Add(2*time.Second), true)
	require.True(t, full)
	slow := batch.Batch{ID: 2, RunAt: t0.Add(-time.Second), Attempt: 1}
	c.done([]batch.Batch{slow}, time.Time{}, time.Millisecond)
	require.Equal(t, 2*claimFloorLagInit, c.floorLag())

	c.next(t0.Add(4*time.Second), true)
	released := batch.Batch{ID: 3, RunAt: t0.Add(-time.Hour), Attempt: 2}
	c.done([]batch.Batch{released}, time.Time{}, time.Millisecond)
	require.Equal(t, 2*claimFloorLagInit*3/4, c.floorLag(), "a batch claimed before is not a slow enqueue")

	for i := range 40 {
		c.next(t0.Add(time.Duration(6+2*i)*time.Second), true)
		c.done(nil, time.Time{}, time.Millisecond)
	}
	require.Equal(t, claimFloorLagMin, c.floorLag())
	for i := range 40 {
		c.next(t0.Add(time.Duration(100+2*i)*time.Second), true)
		c.done([]batch.Batch{{ID: int64(10 + i), RunAt: t0.Add(-time.Hour), Attempt: 1}}, time.Time{}, time.Millisecond)
	}
	require.Equal(t, claimFloorLagMax, c.floorLag())
}

func TestReclaimFloor(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	var f reclaimFloor
	lookback, full := f.next(t0)
	require.True(t, full)
	require.Equal(t, reclaimAll, lookback)
	ch := make(chan struct{})
	f.done(t0, ch, true, 10*time.Millisecond, 3, nil)

	lookback, full = f.next(t0.Add(500 * time.Millisecond))
	require.False(t, full)
	require.Equal(t, 500*time.Millisecond+reclaimMargin, lookback, "back to the previous reclaim, and the margin")
	f.done(t0.Add(500*time.Millisecond), ch, false, time.Millisecond, 0, nil)
	lookback, _ = f.next(t0.Add(700 * time.Millisecond))
	require.Equal(t, 200*time.Millisecond+reclaimMargin, lookback)

	// A reclaim that hit its limit or failed: the next one is full.
	f.done(t0.Add(700*time.Millisecond), ch, false, time.Millisecond, reclaimLimit, nil)
	_, full = f.next(t0.Add(800 * time.Millisecond))
	require.True(t, full, "after a reclaim that hit its limit")
	f.done(t0.Add(800*time.Millisecond), ch, true, time.Millisecond, 0, nil)
	_, full = f.next(t0.Add(900 * time.Millisecond))
	require.False(t, full)
	f.done(t0.Add(900*time.Millisecond), ch, false, time.Millisecond, 0, errors.New("boom"))
	_, full = f.next(t0.Add(time.Second))
	require.True(t, full, "after an error")
	f.done(t0.Add(time.Second), ch, true, time.Millisecond, 0, nil)

	// A writer change: the new writer may hold leases that expired long ago.
	close(ch)
	_, full = f.next(t0.Add(1100 * time.Millisecond))
	require.True(t, full, "after a writer change")
}

func TestVacuumPace(t *testing.T) {
	p := vacuumPace{base: 2 * time.Second}
	require.Equal(t, 2*time.Second, p.interval())
	p.done(vacuumResult{ran: true, deadBefore: 50000, deadAfter: 100})
	require.Equal(t, 2*time.Second, p.interval(), "an effective vacuum keeps the pace")
	held := vacuumResult{ran: true, deadBefore: 50000, deadAfter: 49000}
	require.True(t, held.ineffective())
	p.done(held)
	require.Equal(t, 4*time.Second, p.interval())
	p.done(vacuumResult{}) // skipped: not due
	require.Equal(t, 4*time.Second, p.interval())
	for range 10 {
		p.done(held)
	}
	require.Equal(t, vacuumIntervalMax, p.interval(), "capped")
	p.done(vacuumResult{ran: true, deadBefore: 60000, deadAfter: 0})
	require.Equal(t, 2*time.Second, p.interval(), "back to the base once the snapshot is gone")
	require.False(t, vacuumResult{ran: true, deadBefore: 900, deadAfter: 900}.ineffective(), "too few dead tuples to matter")
	require.False(t, vacuumResult{ran: true, deadBefore: 50000, deadAfter: 60000, churned: 59000}.ineffective(),
		"what is dead after it was made while it ran")
}

// TestClaimPaceShared: runners of one client and queue share their full
// claims. Once one of them has a floor, a second one with a floor makes no
// full claim until the shared interval has passed since the first one's,
// while a runner without a floor (at start, after a reset) or asked to
// makes one at once. The floor's lag is shared too.
func TestClaimPaceShared(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	pace := &claimPace{}
	a, b := claimCursor{pace: pace}, claimCursor{pace: pace}
	batchAt := func(id int64, at time.Time) []batch.Batch {
		return []batch.Batch{{ID: id, RunAt: at, Attempt: 1}}
	}

	full, _, _ := a.next(t0, false)
	require.True(t, full, "a has no floor")
	a.done(batchAt(1, t0), time.Time{}, 2*time.Second) // a slow full claim: the next in 100 s
	full, _, _ = b.next(t0.Add(time.Second), false)
	require.True(t, full, "b has no floor yet")
	b.done(batchAt(2, t0), time.Time{}, 2*time.Second)

	full, _, _ = a.next(t0.Add(50*time.Second), false)
	require.False(t, full, "b's full claim 49 s ago serves a too")
	a.done(batchAt(3, t0.Add(50*time.Second)), time.Time{}, time.Millisecond)
	full, _, _ = b.next(t0.Add(102*time.Second), false)
	require.True(t, full, "due: 100 s after the last full claim of either")
	b.done(nil, t0.Add(102*time.Second), time.Millisecond)
	full, _, _ = a.next(t0.Add(102500*time.Millisecond), false)
	require.False(t, full, "b's full claim, 0.5 s ago, is a's too")
	full, _, _ = a.next(t0.Add(104*time.Second), true)
	require.True(t, full, "asked (a reclaim)")

	// The lag is the pace's: b's full claim that found nothing shortened it for a.
	require.Equal(t, claimFloorLagInit*3/4, a.floorLag())
	require.Equal(t, a.floorLag(), b.floorLag())
}

// TestReclaimFloorShared: runners sharing a reclaim floor make one full
// reclaim per interval between them; the others look back to the last
// reclaim that took all it found, whoever made it.
func TestReclaimFloorShared(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	f := &reclaimFloor{}
	_, full := f.next(t0)
	require.True(t, full, "first reclaim")
	f.done(t0, nil, true, 2*time.Second, 0, nil) // slow: the next full one in 100 s
	lookback, full := f.next(t0.Add(50 * time.Second))
	require.False(t, full)
	require.Equal(t, 50*time.Second+reclaimMargin, lookback)
	f.done(t0.Add(50*time.Second), nil, false, time.Millisecond, 0, nil)
	_, full = f.next(t0.Add(100 * time.Second))
	require.True(t, full, "due")
	lookback, full = f.next(t0.Add(100500 * time.Millisecond))
	require.False(t, full, "another runner's full reclaim began 0.5 s ago")
	require.Equal(t, 50500*time.Millisecond+reclaimMargin, lookback, "back to the last reclaim that finished")
}
