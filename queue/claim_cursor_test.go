package queue

import (
	"context"
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
	floored := func(at time.Time) claimPlan {
		t.Helper()
		p := c.next(at, false)
		require.Equal(t, claimFloored, p.kind)
		c.done(at, nil, false, time.Time{}, time.Millisecond, cheapSlice)
		return p
	}

	require.Equal(t, claimFull, c.next(t0, false).kind, "the first claim reads from the head")
	// A full claim that found nothing: the floor is the database's clock,
	// less the lag, at the default priority.
	c.done(t0, nil, false, t0.Add(time.Hour), time.Millisecond, cheapSlice)
	p := floored(t0.Add(100 * time.Millisecond))
	require.Equal(t, int16(0), p.priority)
	require.Equal(t, t0.Add(time.Hour-claimFloorLagInit), p.runAt)

	// A floored claim: the floor moves to the last batch taken (in any
	// order), less the lag.
	c.next(t0.Add(200*time.Millisecond), false)
	c.done(t0, []batch.Batch{b(9, 0, t0.Add(2*time.Hour)), b(7, 0, t0.Add(3*time.Hour)), b(8, 0, t0.Add(2*time.Hour))}, true, time.Time{}, time.Millisecond, cheapSlice)
	p = floored(t0.Add(300 * time.Millisecond))
	require.Equal(t, int16(0), p.priority)
	require.Equal(t, t0.Add(3*time.Hour-claimFloorLagInit), p.runAt)

	// It never moves down: not for an older batch, not for a more urgent one.
	c.next(t0.Add(400*time.Millisecond), false)
	c.done(t0, []batch.Batch{b(3, 0, t0)}, false, time.Time{}, time.Millisecond, cheapSlice)
	c.next(t0.Add(500*time.Millisecond), false)
	c.done(t0, []batch.Batch{b(4, -5, t0.Add(5*time.Hour))}, false, time.Time{}, time.Millisecond, cheapSlice)
	p = floored(t0.Add(600 * time.Millisecond))
	require.Equal(t, int16(0), p.priority)
	require.Equal(t, t0.Add(3*time.Hour-claimFloorLagInit), p.runAt)
	// A less urgent priority is further along.
	c.next(t0.Add(700*time.Millisecond), false)
	c.done(t0, []batch.Batch{b(5, 2, t0)}, false, time.Time{}, time.Millisecond, cheapSlice)
	p = floored(t0.Add(800 * time.Millisecond))
	require.Equal(t, int16(2), p.priority)
	require.Equal(t, t0.Add(-claimFloorLagInit), p.runAt)

	// fullScanMin after the full claim began, the sweep's first pass: a
	// slice of the floor's priority just below the floor.
	p = c.next(t0.Add(time.Second), false)
	require.Equal(t, claimSlice, p.kind)
	require.Equal(t, int16(2), p.slice.key)
	require.Equal(t, t0.Add(-claimFloorLagInit), p.slice.hi)
	require.Equal(t, p.slice.hi.Add(-sliceWidthInit), p.slice.lo)
	// A slice rides along with a claim from the floor. One that found a
	// batch below the floor leaves the floor alone; a cheap one is
	// followed by the next slice at once, further down.
	require.Equal(t, t0.Add(-claimFloorLagInit), p.runAt)
	c.done(t0.Add(time.Second), []batch.Batch{b(6, 2, t0.Add(-10*time.Second))}, false, time.Time{}, time.Millisecond, cheapSlice)
	p2 := c.next(t0.Add(1010*time.Millisecond), false)
	require.Equal(t, claimSlice, p2.kind)
	require.Equal(t, p.slice.lo, p2.slice.hi)
	require.Equal(t, t0.Add(-claimFloorLagInit), p2.runAt)
	// A dear one (a million entries, 2.5 s on the server) holds the next
	// off for 50 s.
	c.done(t0.Add(1010*time.Millisecond), nil, false, time.Time{}, time.Second, sliceCost{entries: 1_000_000, took: 2500 * time.Millisecond})
	p = c.next(t0.Add(50*time.Second), false)
	require.Equal(t, claimFloored, p.kind)
	c.done(t0.Add(50*time.Second), nil, false, time.Time{}, time.Millisecond, cheapSlice)
	require.Equal(t, claimSlice, c.next(t0.Add(52*time.Second), false).kind)
	c.done(t0.Add(52*time.Second), nil, false, time.Time{}, time.Millisecond, cheapSlice)

	// A failed claim keeps the floor.
	c.next(t0.Add(1020*time.Millisecond), false)
	c.failed(t0.Add(1020*time.Millisecond), time.Time{}, errors.New("boom"))
	p = floored(t0.Add(1030 * time.Millisecond))
	require.Equal(t, t0.Add(-claimFloorLagInit), p.runAt)
}

// TestClaimCursorFullClaimTimesOut: under an old snapshot that kept more
// dead entries than a round trip can walk, the full claim at start times
// out. The runner does not repeat it: its floor starts at the database's
// clock (read before the claim), and a pass of the sweep is due at once.
func TestClaimCursorFullClaimTimesOut(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC)
	var c claimCursor
	require.Equal(t, claimFull, c.next(t0, false).kind)
	c.failed(t0.Add(10*time.Second), time.Time{}, errors.New("no writer"))
	require.Equal(t, claimFull, c.next(t0.Add(11*time.Second), false).kind, "nothing known yet: a full claim again")
	c.failed(t0.Add(21*time.Second), t0.Add(11*time.Second), context.DeadlineExceeded)
	p := c.next(t0.Add(22*time.Second), false)
	require.Equal(t, claimSlice, p.kind, "the pass below the new floor")
	require.Equal(t, t0.Add(11*time.Second-claimFloorLagInit), p.slice.hi)
	for at := t0.Add(22 * time.Second); p.kind == claimSlice; p = c.next(at, false) {
		c.done(at, nil, false, time.Time{}, time.Millisecond, cheapSlice)
		at = at.Add(50 * time.Millisecond)
	}
	require.Equal(t, claimFloored, p.kind, "the pass reached the bottom")
	require.Equal(t, t0.Add(11*time.Second-claimFloorLagInit), p.runAt)
}

// cheapSlice is a slice that read no entries.
var cheapSlice = sliceCost{took: time.Millisecond}

// TestSweep: a pass moves down from its floor a slice at a time; a slice's
// width follows the entries it read against its budget (wider when it read
// few, narrower in proportion when many, a quarter after an error), the
// budget follows what an entry cost the server, slices are spaced by
// sweepCost times their time on the server, a filled slice is swept again,
// and a slice as wide as sliceWhole reaches the bottom and ends the pass.
func TestSweep(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC)
	s := sweep{}
	floor := t0.Add(-time.Hour)
	now := t0
	width := func(sl slice) time.Duration { return sl.hi.Sub(sl.lo) }

	sl, ok := s.next(now, 0, floor)
	require.True(t, ok)
	require.Equal(t, floor, sl.hi)
	require.Equal(t, floor.Add(-sliceWidthInit), sl.lo)
	_, ok = s.next(now, 0, floor)
	require.False(t, ok, "one slice in flight")
	require.Equal(t, float64(sliceEntriesInit), s.budget(), "no cost per entry known yet")
	// Dear: 400,000 entries in 200 ms: 500 ns an entry, so a budget of
	// 20,000 (10 ms), a twentieth of what it read: a twentieth of the width,
	// and the next slice 20 × 200 ms later.
	ended, _ := s.done(now, sl, sliceCost{entries: 400_000, took: 200 * time.Millisecond}, false, false, nil)
	require.False(t, ended)
	require.InDelta(t, 20_000, s.budget(), 1)
	_, ok = s.next(now.Add(3999*time.Millisecond), 0, floor)
	require.False(t, ok)
	now = now.Add(4 * time.Second)
	sl2, ok := s.next(now, 0, floor)
	require.True(t, ok)
	require.Equal(t, sl.lo, sl2.hi, "the pass moves down")
	require.Equal(t, sliceWidthInit/20, width(sl2))

	// Filled: the same slice again, at once.
	s.done(now, sl2, sliceCost{entries: 10_000, took: 5 * time.Millisecond}, true, false, nil)
	sl3, ok := s.next(now, 0, floor)
	require.True(t, ok)
	require.Equal(t, sl2.hi, sl3.hi)
	// An error (a timeout): a quarter as wide, the same place.
	s.done(now, sl3, sliceCost{}, false, false, context.DeadlineExceeded)
	_, ok = s.next(now, 0, floor)
	require.False(t, ok, "not before minRetryGap")
	now = now.Add(minRetryGap)
	sl4, ok := s.next(now, 0, floor)
	require.True(t, ok)
	require.Equal(t, sl3.hi, sl4.hi)
	require.Equal(t, width(sl3)/4, width(sl4))

	// The round trip's time does not matter, the server's does: 50,000
	// entries in 5 ms (100 ns each) make entries cheaper and the budget
	// larger; the width follows the budget against what the slice read,
	// and the next slice waits 20 × its 5 ms.
	s.done(now, sl4, sliceCost{entries: 50_000, took: 5 * time.Millisecond}, false, false, nil)
	require.Less(t, s.budget(), float64(sliceEntriesMax))
	require.Greater(t, s.budget(), float64(20_000), "entries got cheaper")
	b := s.budget()
	_, ok = s.next(now.Add(99*time.Millisecond), 0, floor)
	require.False(t, ok)
	now = now.Add(100 * time.Millisecond)
	sl5, ok := s.next(now, 0, floor)
	require.True(t, ok)
	require.Equal(t, sl4.lo, sl5.hi)
	require.InDelta(t, float64(width(sl4))*b/50_000, float64(width(sl5)), float64(time.Microsecond))

	// Cheap slices (below the dead entries) widen fourfold, follow at once,
	// until one reaches the bottom.
	for i := 0; ; i++ {
		require.Less(t, i, 30)
		ended, missed := s.done(now, sl5, sliceCost{entries: 12, took: time.Millisecond}, false, i == 2, nil)
		if sl5.bottom() {
			require.True(t, ended)
			require.True(t, missed, "a slice of the pass found a batch the floor missed")
			break
		}
		require.False(t, ended)
		w := width(sl5)
		sl5, ok = s.next(now, 0, floor)
		require.True(t, ok, "at once")
		if !sl5.bottom() {
			require.Equal(t, 4*w, width(sl5))
		}
	}

	// The next pass starts at its floor, with the first width of the last.
	now = now.Add(time.Minute)
	floor = floor.Add(time.Minute)
	sl, ok = s.next(now, 0, floor)
	require.True(t, ok)
	require.Equal(t, floor, sl.hi)
	first := width(sl)
	require.Equal(t, sliceWidthInit/20, first, "the first slice of the pass before was dear")
	// Hurried while under way: nothing changes; a pass for another
	// priority (the floor moved on) starts over at once.
	s.done(now, sl, sliceCost{entries: int64(b), took: 120 * time.Millisecond}, false, false, nil)
	s.hurry()
	_, ok = s.next(now.Add(2399*time.Millisecond), 0, floor)
	require.False(t, ok, "120 ms on the server: the next slice 2.4 s later")
	sl, ok = s.next(now.Add(2400*time.Millisecond), 0, floor)
	require.True(t, ok)
	require.Equal(t, floor.Add(-first), sl.hi)
	s.done(now.Add(3*time.Second), sl, cheapSlice, false, false, nil)
	sl, ok = s.next(now.Add(4*time.Second), 3, floor)
	require.True(t, ok)
	require.Equal(t, int16(3), sl.key)
	require.Equal(t, floor, sl.hi)
}

// TestSweepBase: one ordinary claim in baseEvery is metered, and a slice
// costs what it read and took beyond them: under an old snapshot the claim
// from the floor walks the dead entries within the lag, and those must not
// narrow the slices to nothing.
func TestSweepBase(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC)
	s := sweep{}
	require.True(t, s.wantBase(), "the first ordinary claim")
	s.observe(sliceCost{entries: 30_000, took: 6 * time.Millisecond})
	for range baseEvery - 1 {
		require.False(t, s.wantBase())
	}
	require.True(t, s.wantBase())
	s.observe(sliceCost{entries: 30_000, took: 6 * time.Millisecond})

	sl, ok := s.next(t0, 0, t0)
	require.True(t, ok)
	// 50,000 entries in 10 ms, 20,000 and 4 ms beyond the base: 200 ns an
	// entry, a budget of 50,000, so 2.5 times as wide; the next slice
	// 20 × 4 ms later.
	s.done(t0, sl, sliceCost{entries: 50_000, took: 10 * time.Millisecond}, false, false, nil)
	require.InDelta(t, 200, s.perEntry, 0.001)
	_, ok = s.next(t0.Add(79*time.Millisecond), 0, t0)
	require.False(t, ok)
	sl2, ok := s.next(t0.Add(80*time.Millisecond), 0, t0)
	require.True(t, ok)
	require.Equal(t, sl.hi.Sub(sl.lo)*5/2, sl2.hi.Sub(sl2.lo))
	// Cheaper than the base: nothing beyond it, the next at once.
	s.done(t0, sl2, sliceCost{entries: 10_000, took: 2 * time.Millisecond}, false, false, nil)
	_, ok = s.next(t0, 0, t0)
	require.True(t, ok)
}

// TestSweepUncounted: where the server does not count entries
// (track_counts off), a slice's time on the server stands in for them.
func TestSweepUncounted(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC)
	s := sweep{}
	sl, ok := s.next(t0, 0, t0)
	require.True(t, ok)
	s.done(t0, sl, sliceCost{entries: -1, took: 4 * sliceTarget}, false, false, nil)
	sl2, ok := s.next(t0.Add(4*sliceTarget*sweepCost), 0, t0)
	require.True(t, ok)
	require.Equal(t, sl.hi.Sub(sl.lo)/4, sl2.hi.Sub(sl2.lo))
	s.done(t0, sl2, sliceCost{entries: -1, took: sliceTarget / 10}, false, false, nil)
	sl3, ok := s.next(t0, 0, t0)
	require.True(t, ok, "cheap: at once")
	require.Equal(t, 4*(sl2.hi.Sub(sl2.lo)), sl3.hi.Sub(sl3.lo))
	require.Zero(t, s.perEntry)
}

// TestClaimFloorLagAdapts: a slice that finds a first claim below the
// floor (an enqueue slower than the lag) doubles the lag; a pass that
// finds none shortens it; a batch claimed before (released, reclaimed)
// does not count.
func TestClaimFloorLagAdapts(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	var c claimCursor
	c.next(t0, false)
	c.done(t0, []batch.Batch{{ID: 1, RunAt: t0, Attempt: 1}}, false, time.Time{}, time.Millisecond, cheapSlice)
	require.Equal(t, t0.Add(-claimFloorLagInit), c.next(t0.Add(time.Millisecond), false).runAt)
	c.done(t0, nil, false, time.Time{}, time.Millisecond, cheapSlice)

	// pass runs one pass of the sweep at at, whose first slice finds claimed.
	pass := func(at time.Time, claimed ...batch.Batch) {
		t.Helper()
		p := c.next(at, true)
		for i := 0; ; i++ {
			require.Less(t, i, 30)
			if p.kind == claimFloored {
				c.done(at, nil, false, time.Time{}, time.Millisecond, cheapSlice)
				require.False(t, c.shared().sweep.active, "the pass ended")
				return
			}
			require.Equal(t, claimSlice, p.kind)
			c.done(at, claimed, false, time.Time{}, time.Millisecond, cheapSlice)
			claimed = nil
			at = at.Add(50 * time.Millisecond)
			p = c.next(at, false)
		}
	}
	pass(t0.Add(2*time.Second), batch.Batch{ID: 2, RunAt: t0.Add(-time.Second), Attempt: 1})
	require.Equal(t, 2*claimFloorLagInit, c.floorLag())
	pass(t0.Add(4*time.Second), batch.Batch{ID: 3, RunAt: t0.Add(-time.Hour), Attempt: 2})
	require.Equal(t, 2*claimFloorLagInit*3/4, c.floorLag(), "a batch claimed before is not a slow enqueue")

	for i := range 40 {
		pass(t0.Add(time.Duration(6+2*i) * time.Second))
	}
	require.Equal(t, claimFloorLagMin, c.floorLag())
	for i := range 40 {
		pass(t0.Add(time.Duration(100+2*i)*time.Second), batch.Batch{ID: int64(10 + i), RunAt: t0.Add(-time.Hour), Attempt: 1})
	}
	require.Equal(t, claimFloorLagMax, c.floorLag())
}

func TestReclaimFloor(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	var f reclaimFloor
	ch := make(chan struct{})
	require.Equal(t, reclaimMargin, f.next(t0, ch), "the first reclaim looks back the margin; the sweep takes the rest")
	require.Equal(t, t0.Add(-reclaimMargin), f.floor())
	sl, ok := f.sweep.next(t0, 0, f.floor())
	require.True(t, ok, "the first pass is due at once")
	require.Equal(t, t0.Add(-reclaimMargin), sl.hi)
	f.sweep.done(t0, sl, cheapSlice, false, false, nil)
	f.done(t0, 3, nil)

	require.Equal(t, 500*time.Millisecond+reclaimMargin, f.next(t0.Add(500*time.Millisecond), ch), "back to the previous reclaim, and the margin")
	f.done(t0.Add(500*time.Millisecond), 0, nil)
	require.Equal(t, 200*time.Millisecond+reclaimMargin, f.next(t0.Add(700*time.Millisecond), ch))

	// A reclaim that hit its limit or failed does not move the floor.
	f.done(t0.Add(700*time.Millisecond), reclaimLimit, nil)
	require.Equal(t, 300*time.Millisecond+reclaimMargin, f.next(t0.Add(800*time.Millisecond), ch))
	f.done(t0.Add(800*time.Millisecond), 0, errors.New("boom"))
	require.Equal(t, 400*time.Millisecond+reclaimMargin, f.next(t0.Add(900*time.Millisecond), ch))
	f.done(t0.Add(900*time.Millisecond), 0, nil)

	// Finish the first pass; the next is due fullScanMin after it began.
	for i := 0; ; i++ {
		require.Less(t, i, 30)
		sl, ok = f.sweep.next(t0.Add(time.Second), 0, f.floor())
		if !ok {
			break
		}
		f.sweep.done(t0.Add(time.Second), sl, cheapSlice, false, false, nil)
	}
	require.False(t, f.sweep.active)
	// Rather at once after a writer change: the new writer may hold leases
	// that expired long ago.
	close(ch)
	f.next(t0.Add(1100*time.Millisecond), make(chan struct{}))
	sl, ok = f.sweep.next(t0.Add(1100*time.Millisecond), 0, f.floor())
	require.True(t, ok, "after a writer change")
	require.Equal(t, t0.Add(900*time.Millisecond-reclaimMargin), sl.hi)
}

func TestVacuumPace(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	p := vacuumPace{base: 2 * time.Second}
	require.Equal(t, 2*time.Second, p.interval())
	p.done(t0, vacuumResult{ran: true, deadBefore: 50000, deadAfter: 100}, nil)
	require.Equal(t, 2*time.Second, p.interval(), "an effective vacuum keeps the pace")
	held := vacuumResult{ran: true, deadBefore: 50000, deadAfter: 49000}
	require.True(t, held.ineffective())
	p.done(t0, held, nil)
	require.Equal(t, 4*time.Second, p.interval())
	p.done(t0, vacuumResult{}, nil) // skipped: not due
	require.Equal(t, 4*time.Second, p.interval())
	for range 10 {
		p.done(t0, held, nil)
	}
	require.Equal(t, vacuumIntervalMax, p.interval(), "capped")
	p.done(t0, vacuumResult{ran: true, deadBefore: 60000, deadAfter: 0}, nil)
	require.Equal(t, 2*time.Second, p.interval(), "back to the base once the snapshot is gone")
	p.done(t0, vacuumResult{}, context.DeadlineExceeded)
	require.Equal(t, 4*time.Second, p.interval(), "a vacuum that ran out of time counts as one that removed nothing")
	require.False(t, p.due(t0.Add(3*time.Second)), "and it leaves no record in the database: the pace spaces the next")
	require.True(t, p.due(t0.Add(4*time.Second)))
	p.done(t0, vacuumResult{ran: true, deadBefore: 60000, deadAfter: 0}, nil)
	require.Equal(t, 2*time.Second, p.interval(), "back to the base once the snapshot is gone")
	require.False(t, vacuumResult{ran: true, deadBefore: 900, deadAfter: 900}.ineffective(), "too few dead tuples to matter")
	require.False(t, vacuumResult{ran: true, deadBefore: 50000, deadAfter: 60000, churned: 59000}.ineffective(),
		"what is dead after it was made while it ran")
}

// TestClaimPaceShared: runners of one client and queue share the sweep
// below their floors, and the floor's lag.
func TestClaimPaceShared(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	pace := newClaimPace()
	a, b := claimCursor{pace: pace}, claimCursor{pace: pace}
	batchAt := func(id int64, at time.Time) []batch.Batch {
		return []batch.Batch{{ID: id, RunAt: at, Attempt: 1}}
	}

	require.Equal(t, claimFull, a.next(t0, false).kind, "a has no floor")
	a.done(t0, batchAt(1, t0), false, time.Time{}, time.Millisecond, cheapSlice)
	require.Equal(t, claimFull, b.next(t0, false).kind, "b has no floor yet")
	b.done(t0, batchAt(2, t0), false, time.Time{}, time.Millisecond, cheapSlice)

	p := a.next(t0.Add(2*time.Second), false)
	require.Equal(t, claimSlice, p.kind, "a pass is due")
	require.Equal(t, claimFloored, b.next(t0.Add(2*time.Second), false).kind, "a's slice is in flight")
	b.done(t0.Add(2*time.Second), nil, false, time.Time{}, time.Millisecond, cheapSlice)
	a.done(t0.Add(2*time.Second), nil, false, time.Time{}, time.Second, sliceCost{entries: 100_000, took: 750 * time.Millisecond}) // dear: the next slice 15 s later
	require.Equal(t, claimFloored, b.next(t0.Add(16*time.Second), false).kind, "a's slice was b's too")
	b.done(t0.Add(16*time.Second), nil, false, time.Time{}, time.Millisecond, cheapSlice)
	p2 := b.next(t0.Add(18*time.Second), false)
	require.Equal(t, claimSlice, p2.kind)
	require.Equal(t, p.slice.lo, p2.slice.hi, "b goes on where a left off")
	b.done(t0.Add(18*time.Second), batchAt(3, p2.slice.hi.Add(-time.Second)), false, time.Time{}, time.Millisecond, cheapSlice)
	for i := 0; pace.sweep.active; i++ { // to the end of the pass
		require.Less(t, i, 30)
		require.Equal(t, claimSlice, b.next(t0.Add(18*time.Second), false).kind, "cheap slices follow at once")
		b.done(t0.Add(18*time.Second), nil, false, time.Time{}, time.Millisecond, cheapSlice)
	}

	// The lag is the pace's: b's pass found a slow enqueue below the floor.
	require.Equal(t, 2*claimFloorLagInit, a.floorLag())
	require.Equal(t, a.floorLag(), b.floorLag())
}

// TestReclaimFloorShared: runners sharing a reclaim floor look back to the
// last reclaim that took all it found, whoever made it, and share one sweep.
func TestReclaimFloorShared(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	f := &reclaimFloor{}
	f.next(t0, nil)
	f.done(t0, 0, nil)
	_, ok := f.sweep.next(t0, 0, f.floor())
	require.True(t, ok)
	_, ok = f.sweep.next(t0, 0, f.floor())
	require.False(t, ok, "another runner's slice is in flight")
	require.Equal(t, 50*time.Second+reclaimMargin, f.next(t0.Add(50*time.Second), nil))
	f.done(t0.Add(50*time.Second), 0, nil)
	require.Equal(t, 500*time.Millisecond+reclaimMargin, f.next(t0.Add(50500*time.Millisecond), nil), "back to the last reclaim that finished")
}

// TestClaimFloorFollowsTheBacklog: the floor is the last batch a claim
// took when the backlog is deeper than the lag (every batch below it was
// enqueued by a transaction that began more than the lag before the
// claim), and the claim's clock less the lag when the claims have caught
// up with the producers. Without the claim's clock, the lag is taken off
// the last batch, as before.
func TestClaimFloorFollowsTheBacklog(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC)
	var c claimCursor
	c.next(t0, false)
	c.done(t0, nil, false, t0, time.Millisecond, cheapSlice) // the full claim at start
	lag := c.floorLag()
	claim := func(runAt, dbNow time.Time) time.Time {
		t.Helper()
		require.Equal(t, claimFloored, c.next(t0, false).kind)
		c.done(t0, []batch.Batch{{ID: 1, RunAt: runAt.Add(-time.Millisecond)}, {ID: 2, RunAt: runAt}}, true, dbNow, time.Millisecond, cheapSlice)
		return c.runAt
	}
	// A backlog two seconds deep: the floor is the last batch taken.
	require.Equal(t, t0.Add(time.Second), claim(t0.Add(time.Second), t0.Add(3*time.Second)))
	// Caught up: the last batch taken was enqueued a millisecond ago, and
	// an enqueue that began before it may not have committed yet.
	at := t0.Add(5 * time.Second)
	require.Equal(t, at.Add(time.Millisecond-lag), claim(at, at.Add(time.Millisecond)))
	// The claim's clock unknown: the lag comes off the last batch.
	at = t0.Add(10 * time.Second)
	require.Equal(t, at.Add(-lag), claim(at, time.Time{}))
}
