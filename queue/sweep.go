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
// Positions are times (run_at for claims, lease expiry for reclaims); a
// slice's width adapts so that its round trip costs about sliceTarget more
// than an ordinary one (base), and slices are spaced out so that the sweep
// takes about 1/sweepCost of the time: a slice that costs next to nothing
// (below the region an old snapshot keeps) is followed by the next at once. The runners of one client and queue
// share one sweep for claims and one for reclaims: safe for concurrent use.
type sweep struct {
	mu      sync.Mutex
	base    time.Duration // what an ordinary round trip takes (a moving average)
	active  bool          // a pass is under way
	key     int16         // claims: the priority the pass sweeps
	hi      time.Time     // upper bound (exclusive) of the next slice
	width   time.Duration // of the next slice
	first   time.Duration // of a pass's first slice, carried from pass to pass
	atFirst bool
	began   time.Time // start of the current or last pass
	due     time.Time // no slice starts before
	busy    bool      // a slice is in flight
	missed  bool      // a slice of this pass found a batch its floor had missed
}

const (
	sliceTarget    = 10 * time.Millisecond // what a slice may cost beyond an ordinary round trip
	sliceWidthMin  = time.Millisecond
	sliceWidthInit = time.Minute
	sliceWhole     = 7 * 24 * time.Hour // a slice this wide reaches to the bottom
	sweepCost      = 50                 // a slice's extra cost times this is the least time to the next
)

// slice is one claim or reclaim of a sweep: the key (claims: the priority)
// and positions [lo, hi); a zero lo means everything below hi.
type slice struct {
	key    int16
	lo, hi time.Time
	first  bool
}

// bottom reports whether the slice reaches the bottom of the index.
func (s slice) bottom() bool { return s.lo.IsZero() }

// observe records the round trip of an ordinary (not swept) claim or
// reclaim: the base a slice's cost is measured against.
func (s *sweep) observe(took time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.base == 0 {
		s.base = took
		return
	}
	s.base += (took - s.base) / 8
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
	sl := slice{key: s.key, hi: s.hi, first: s.atFirst}
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

// done records the slice sl, swept at now: its round trip took took, its
// claim was filled (so there may be more in it: it is swept again), it
// found a batch its floor had missed, or it failed with err (it is swept
// again, narrower: a timeout under an old snapshot must not recur). It
// reports whether the pass ended with it, and whether any of the pass's
// slices found a batch the floor had missed.
func (s *sweep) done(now time.Time, sl slice, took time.Duration, filled, missed bool, err error) (ended, passMissed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.busy = false
	if !s.active || sl.hi != s.hi || sl.key != s.key {
		return false, false // the pass was given up meanwhile
	}
	if err != nil {
		s.width = max(s.width/16, sliceWidthMin)
		if sl.first {
			s.first = s.width
		}
		s.due = now.Add(minRetryGap)
		return false, false
	}
	extra := max(took-s.base, 0)
	s.due = now.Add(extra * sweepCost)
	s.missed = s.missed || missed
	switch {
	case extra > 2*sliceTarget:
		s.width = max(time.Duration(float64(s.width)*float64(sliceTarget)/float64(extra)), sliceWidthMin)
	case extra < sliceTarget/4:
		s.width = min(4*s.width, sliceWhole)
	case extra < sliceTarget/2:
		s.width = min(2*s.width, sliceWhole)
	}
	if sl.first {
		s.first = s.width
	}
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

// abandon gives back a slice that did not run (a reclaim held off): it is
// the next one again.
func (s *sweep) abandon(sl slice) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.busy = false
}
