package queue

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/skiplock/skiplock/batch"
)

// Claims under an old snapshot.
//
// A claim reads the claim index (queue, priority, run_at, id) from its head.
// Every batch claimed or completed leaves an entry there that only vacuum
// removes, and vacuum may remove it only once no snapshot can still see the
// row. While one old snapshot lives (a pg_dump, a long analytics query, a
// replica with hot_standby_feedback), those entries pile up at the head and
// a claim that starts there visits every one of them: claims get slower with
// every batch finished, until throughput is a fraction of what it was.
//
// So a runner remembers how far its claims have got, and starts the next one
// there: a floor of (priority, run_at) below the batches its last claims
// took. Claims keep their order: a claim takes the lowest batches at or
// above the floor, after any batch of a more urgent priority (a second scan,
// from the head, that only ever walks the entries of urgent batches). What
// the floor can miss are batches that became claimable behind it:
//
//   - an enqueue whose transaction took longer than the lag (its run_at is
//     the transaction's start),
//   - a batch enqueued with a RunAt in the past,
//   - a batch released or reclaimed (it keeps its place in line), and
//   - a batch another claimer had locked and then did not take (its claim
//     failed).
//
// Full claims, from the head of the index, find those: one at start, after a
// writer change, after this runner reclaimed expired leases, and otherwise
// every fullScanMin, or less often when a full claim is slow (fullScanCost
// times what the last one took, at most fullScanMax). Such a batch waits at
// most that long beyond its turn; everything else is claimed in order.
//
// A full claim under an old snapshot walks every entry finished since the
// snapshot began, and its round trip holds up the runner's claims and
// acknowledgements until it returns: 2 s after 3 minutes of churn at 25,000
// batches/s in the mvcc bench, growing with the snapshot's age. Pacing by
// cost keeps such claims to about 2 % of a runner's time whatever they cost;
// fullScanMax only bounds how long a batch behind the floor can wait, so
// it is minutes, not seconds (at 30 s, four runners each spent a 2 s full
// claim in every 30 s window, and the windows with them ran slower).
//
// The lag is what a claim still walks under an old snapshot (the batches
// finished in the last lag), so it adapts: a full claim that finds a batch
// of the floor's priority below the floor, claimed for the first time (an
// enqueue slower than the lag, most likely), doubles it, up to
// claimFloorLagMax; one that finds none takes a quarter off, down to
// claimFloorLagMin.
const (
	claimFloorLagMin  = 50 * time.Millisecond
	claimFloorLagInit = 250 * time.Millisecond
	claimFloorLagMax  = 5 * time.Second
	fullScanMin       = time.Second
	fullScanMax       = 5 * time.Minute
	fullScanCost      = 50
)

// claimPace is what the runners of one client that serve one queue share
// of their claim floors: when the last full claim of any of them began and
// how far apart full claims are to be, and the floor's lag. One full claim
// claims, for all of them, what waited below their floors, so a client's
// runners of a queue together make one full claim per interval, not one
// each (under an old snapshot each one walks every dead entry since the
// snapshot began); and how late enqueues commit is a property of the
// producers, not of one runner.
type claimPace struct {
	mu    sync.Mutex
	last  time.Time // start of the last full claim
	every time.Duration
	lag   time.Duration // 0: claimFloorLagInit

	reclaim reclaimFloor // the runners' reclaims of expired leases
}

// take reports whether a full claim is due at now (or forced), and if so
// records that one begins.
func (p *claimPace) take(now time.Time, forced bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !forced && now.Sub(p.last) < max(p.every, fullScanMin) {
		return false
	}
	p.last = now
	return true
}

// fullDone records a full claim that took took and whether it found a
// batch that its runner's floor had missed.
func (p *claimPace) fullDone(took time.Duration, adapt, missed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.every = min(max(took*fullScanCost, fullScanMin), fullScanMax)
	if !adapt {
		return
	}
	if missed {
		p.lag = min(2*p.lagLocked(), claimFloorLagMax)
	} else {
		p.lag = max(p.lagLocked()*3/4, claimFloorLagMin)
	}
}

func (p *claimPace) floorLag() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lagLocked()
}

func (p *claimPace) lagLocked() time.Duration {
	if p.lag == 0 {
		return claimFloorLagInit
	}
	return p.lag
}

// claimCursor is a runner's claim floor. Only the claim loop uses it; its
// pace is shared (see claimPace).
type claimCursor struct {
	valid    bool
	priority int16
	runAt    time.Time
	full     bool // the claim in flight is a full one
	pace     *claimPace
}

func (c *claimCursor) floorLag() time.Duration { return c.shared().floorLag() }

func (c *claimCursor) shared() *claimPace {
	if c.pace == nil {
		c.pace = &claimPace{}
	}
	return c.pace
}

// next reports whether the next claim must be a full one (and remembers it
// until done), and the floor of a floored one. A runner without a floor
// (at start, after a reset) or asked to makes a full claim whatever the
// others did.
func (c *claimCursor) next(now time.Time, asked bool) (full bool, priority int16, runAt time.Time) {
	c.full = c.shared().take(now, asked || !c.valid)
	return c.full, c.priority, c.runAt
}

// done records a claim's result: the batches it took (in any order), the
// database's clock when a full claim ran (zero for a floored one), and how
// long its round trip took. A claim takes the lowest claimable batches at or
// above the floor that no other claimer holds, so nothing claimable is left
// below the last of them but batches of the kinds listed above; the floor
// moves up to that one, less the lag. A full claim that found nothing puts
// the floor at the default priority and the database's clock, less the lag:
// whatever is enqueued from then on is above it. The floor
// never moves down.
func (c *claimCursor) done(claimed []batch.Batch, dbNow time.Time, took time.Duration) {
	pace := c.shared()
	if c.full {
		missed := c.valid && slices.ContainsFunc(claimed, func(b batch.Batch) bool {
			return b.Attempt == 1 && b.Priority == c.priority && b.RunAt.Before(c.runAt)
		})
		pace.fullDone(took, c.valid, missed)
	}
	lag := pace.floorLag()
	var p int16
	var at time.Time
	switch {
	case len(claimed) > 0:
		last := slices.MaxFunc(claimed, func(a, b batch.Batch) int {
			return cmp.Or(cmp.Compare(a.Priority, b.Priority), a.RunAt.Compare(b.RunAt), cmp.Compare(a.ID, b.ID))
		})
		p, at = last.Priority, last.RunAt.Add(-lag)
	case c.full && !dbNow.IsZero():
		p, at = 0, dbNow.Add(-lag)
	default:
		return
	}
	if !c.valid || p > c.priority || (p == c.priority && at.After(c.runAt)) {
		c.valid, c.priority, c.runAt = true, p, at
	}
}

// reset makes the next claim a full one and forgets the floor: after a
// writer change or a failed claim nothing is known of the new state.
func (c *claimCursor) reset() { c.valid = false }

// reclaimMargin is how far before the previous reclaim a floored reclaim
// looks: leases written by a transaction still in flight then.
const reclaimMargin = 2 * time.Second

// reclaimFloor paces reclaims of expired leases the same way; the runners
// of one client that serve one queue share it (claimPace.reclaim), so their
// full reclaims are one per interval. Their scan reads the lease index
// (lease_expires_at of running batches) from its head, where the entries of
// every batch completed since the oldest snapshot began collect. A lease
// that expired before a reclaim began was found by it, so the next reclaim
// needs to look back only to then (and reclaimMargin more). A full reclaim
// runs at start, after an error, a reclaim that hit its limit or a writer
// change, and otherwise as full claims do.
type reclaimFloor struct {
	mu        sync.Mutex
	lastDone  time.Time       // start of the last reclaim that took all it found
	changed   <-chan struct{} // the writer-change channel at lastDone
	lastFull  time.Time       // start of the last full reclaim
	fullEvery time.Duration
}

// next returns the lookback of the next reclaim and whether it is a full
// one (recorded as begun at now).
func (f *reclaimFloor) next(now time.Time) (lookback time.Duration, full bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lastDone.IsZero() || closed(f.changed) || now.Sub(f.lastFull) >= max(f.fullEvery, fullScanMin) {
		f.lastFull = now
		return reclaimAll, true
	}
	return now.Sub(f.lastDone) + reclaimMargin, false
}

// done records a reclaim that began at start with the writer-change channel
// changed, took took, and found n expired leases (or failed).
func (f *reclaimFloor) done(start time.Time, changed <-chan struct{}, full bool, took time.Duration, n int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil || n >= reclaimLimit {
		f.lastDone = time.Time{}
		return
	}
	f.lastDone, f.changed = start, changed
	if full {
		f.fullEvery = min(max(took*fullScanCost, fullScanMin), fullScanMax)
	}
}

// vacuumPace spaces a runner's vacuums: every VacuumInterval while they
// remove what they find, twice as far apart (up to vacuumIntervalMax) after
// each one that could not, because a snapshot still sees the dead rows.
// Vacuuming then only scans a table that keeps growing until the snapshot
// ends, on cores the queue needs.
type vacuumPace struct {
	base, every time.Duration
}

const vacuumIntervalMax = 2 * time.Minute

func (p *vacuumPace) interval() time.Duration { return max(p.every, p.base) }

func (p *vacuumPace) done(v vacuumResult) {
	switch {
	case v.ineffective():
		p.every = min(2*p.interval(), max(vacuumIntervalMax, p.base))
	case v.ran:
		p.every = p.base
	}
}
