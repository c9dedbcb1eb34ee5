package queue

import (
	"sync"
	"time"
)

// sweep is a pass, in slices, over the part of an index below a floor:
// where, under an old snapshot, the dead entries of every batch finished
// since it began collect (see "Claims under an old snapshot" in
// claim_cursor.go). Claims sweep the claim index below their floors for
// batches that became claimable behind them; reclaims sweep the lease index
// below their lookback for leases that expired unseen. A pass starts at a
// floor and moves down a slice at a time until a slice reaches the bottom.
// Positions are times (run_at for claims, lease expiry for reclaims).
//
// A slice's cost is measured on the server, not by its round trip: the
// index entries its statement read, dead ones included (the transaction's
// count of entries the index returned, read before and after it), and how
// long the statement ran. Round trips on a loaded machine vary by more than
// a slice costs; entries do not. A slice's width adapts so that it reads
// about sliceTarget's worth of entries at what an entry has cost lately
// (its budget), and slices are spaced so that the sweep takes about
// 1/sweepCost of the server's time: a slice that read next to nothing
// (below the region an old snapshot keeps) is followed by the next at once.
// Where the server does not count entries (track_counts off), the
// statement's time stands in for them. A claim's statement also reads
// from its floor, which under an old snapshot walks the entries of the
// batches finished within the floor's lag; every baseEvery-th ordinary
// claim is metered too, and a slice's cost is what it read and took beyond
// theirs (the base). The runners of one client and queue share one sweep
// for claims and one for reclaims: safe for concurrent use.
type sweep struct {
	mu       sync.Mutex
	perEntry float64   // what the server spent per entry read, in ns (a moving average); 0: not known yet
	base     sliceCost // what an ordinary (floored) claim costs the server (moving averages)
	baseSeen bool
	ordinary int   // ordinary claims since the last metered one
	active   bool  // a pass is under way
	key      int16 // claims: the priority the pass sweeps
	hi       time.Time
	width    time.Duration // of the next slice
	first    time.Duration // of a pass's first slice, carried from pass to pass
	atFirst  bool          // the next slice is the pass's first
	began    time.Time     // start of the current or last pass
	due      time.Time     // no slice starts before
	busy     bool          // a slice is in flight
	missed   bool          // a slice of this pass found a batch its floor had missed
}

const (
	sliceTarget    = 10 * time.Millisecond // what a slice may cost the server
	sliceWidthMin  = time.Millisecond
	sliceWidthInit = time.Minute
	sliceWhole     = 7 * 24 * time.Hour // a slice this wide reaches to the bottom
	sweepCost      = 20                 // a slice's time on the server times this is the least time to the next

	// A slice's budget of entries: sliceTarget at the recent cost of an
	// entry, within these bounds (a slow disk must not shrink it to
	// nothing, nor a fast cache make one slice walk millions).
	sliceEntriesMin  = 5_000
	sliceEntriesInit = 20_000
	sliceEntriesMax  = 200_000

	baseEvery = 8 // of the ordinary claims, one in this many is metered (see sweep)
)

// slice is one claim or reclaim of a sweep: the key (claims: the priority)
// and positions [lo, hi); a zero lo means everything below hi.
type slice struct {
	key    int16
	lo, hi time.Time
}

// bottom reports whether the slice reaches the bottom of the index.
func (s slice) bottom() bool { return s.lo.IsZero() }

// sliceCost is what a slice's statement cost the server: the entries of
// the swept index it read (live and dead; -1 when the server does not
// count them) and how long it ran.
type sliceCost struct {
	entries int64
	took    time.Duration
}

// budget is how many entries a slice should read.
func (s *sweep) budget() float64 {
	if s.perEntry <= 0 {
		return sliceEntriesInit
	}
	return min(max(float64(sliceTarget)/s.perEntry, sliceEntriesMin), sliceEntriesMax)
}

// wantBase reports whether the next ordinary claim should be metered: the
// first, and one in baseEvery after it.
func (s *sweep) wantBase() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ordinary++
	if !s.baseSeen || s.ordinary >= baseEvery {
		s.ordinary = 0
		return true
	}
	return false
}

// observe records what a metered ordinary claim cost the server: the base
// a slice's cost is measured beyond.
func (s *sweep) observe(cost sliceCost) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cost.entries < 0 {
		cost.entries = 0
	}
	if !s.baseSeen {
		s.base, s.baseSeen = cost, true
		return
	}
	s.base.entries += (cost.entries - s.base.entries) / 4
	s.base.took += (cost.took - s.base.took) / 4
}

// next returns the slice due at now, if any, and marks it in flight until
// done. A pass that starts now starts at floor and sweeps key; a pass under
// way for another key (the floor moved to another priority) starts over.
func (s *sweep) next(now time.Time, key int16, floor time.Time) (slice, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy || now.Before(s.due) {
		return slice{}, false
	}
	if s.active && s.key != key {
		s.active, s.began = false, time.Time{}
	}
	if !s.active {
		if !s.began.IsZero() && now.Sub(s.began) < fullScanMin {
			return slice{}, false
		}
		s.active, s.key, s.hi, s.began, s.missed, s.atFirst = true, key, floor, now, false, true
		if s.first == 0 {
			s.first = sliceWidthInit
		}
		s.width = s.first
	}
	s.busy = true
	sl := slice{key: s.key, hi: s.hi}
	if s.width < sliceWhole {
		sl.lo = s.hi.Add(-s.width)
	}
	return sl, true
}

// dueAt is when the next slice may start (the next pass may start later).
func (s *sweep) dueAt() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.due
}

// done records the slice sl, swept at now: what it cost the server,
// whether its claim was filled (so there may be more in it: it is swept
// again), whether it found a batch its floor had missed, or that it failed
// with err (it is swept again, a quarter as wide: a timeout under an old
// snapshot must not recur). It reports whether the pass ended with it, and
// whether any of the pass's slices found a batch the floor had missed.
func (s *sweep) done(now time.Time, sl slice, cost sliceCost, filled, missed bool, err error) (ended, passMissed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.busy = false
	if !s.active || sl.hi != s.hi || sl.key != s.key {
		return false, false // the pass was given up meanwhile
	}
	if err != nil {
		s.setWidth(max(s.width/4, sliceWidthMin))
		s.due = now.Add(minRetryGap)
		return false, false
	}
	// What the slice cost beyond an ordinary claim.
	if cost.entries >= 0 {
		cost.entries = max(cost.entries-s.base.entries, 0)
	}
	cost.took = max(cost.took-s.base.took, 0)
	// ratio: the slice's cost against its budget.
	var ratio float64
	if cost.entries >= 0 {
		if cost.entries >= sliceEntriesMin/4 {
			ns := float64(cost.took) / float64(cost.entries)
			if s.perEntry == 0 {
				s.perEntry = ns
			}
			s.perEntry += (ns - s.perEntry) / 4
		}
		ratio = float64(cost.entries) / s.budget()
	} else {
		ratio = float64(cost.took) / float64(sliceTarget)
	}
	// In proportion, but at most four times as wide: entries below a
	// cheap slice may be as dense as anywhere.
	grow := 1 / max(ratio, 0.25)
	s.setWidth(min(max(time.Duration(float64(s.width)*grow), sliceWidthMin), sliceWhole))
	s.due = now
	if ratio >= 0.125 {
		s.due = now.Add(cost.took * sweepCost)
	}
	s.missed = s.missed || missed
	if filled {
		s.due = now
		return false, false
	}
	s.atFirst = false
	if sl.bottom() {
		s.active = false
		return true, s.missed
	}
	s.hi = sl.lo
	return false, false
}

// setWidth sets the width of the next slice, and of the next pass's first
// if that is the next.
func (s *sweep) setWidth(w time.Duration) {
	s.width = w
	if s.atFirst {
		s.first = w
	}
}

// covered records that a claim from the head of the index began at now
// (it read all a pass would): the next pass is not due before fullScanMin.
func (s *sweep) covered(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.active {
		s.began = now
	}
}

// hurry starts the next pass as soon as a slice may run, unless one is
// under way: something may have become claimable (or expired) anywhere
// below the floors.
func (s *sweep) hurry() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.active {
		s.began = time.Time{}
	}
}

// abandon gives back the slice in flight, which did not run (a reclaim
// held off): it is the next one again.
func (s *sweep) abandon() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.busy = false
}
