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
// A pass below the floor finds those: a sweep of the floor's priority from
// the floor down to the bottom of the index, in slices of run_at, each
// riding along with one floored claim (a third scan, between the other
// two). A slice's width adapts to the index entries its claim reads, counted
// on the server (see sweep): under an old snapshot the region below the
// floor is where the dead entries are, and a claim that walked all of them
// at once (a full claim) would take longer with every batch finished,
// seconds after minutes, until it no longer fits in a round trip's timeout
// at all. Slices keep each claim short, and their pace (after a slice, the
// next no sooner than sweepCost times its time on the server) keeps the
// sweep to about 5 % of the server's time; a pass starts at most every
// fullScanMin. Without a snapshot, a pass is a slice through the few
// entries not yet vacuumed below the floor and a few cheap ones down to the
// bottom, about what one claim from the head used to cost. A batch behind
// the floor waits at most two passes beyond its turn: about a second
// normally, minutes under a snapshot that kept millions of dead entries. A claim filled by a slice is repeated before
// the pass goes on. A runner claims from the head of the index (a full
// claim) only when it has no floor yet: at start. If that claim fails (a
// timeout under an old snapshot), the floor starts at the database's clock
// and the pass finds what lies below.
//
// The lag is what a claim still walks under an old snapshot (the batches
// finished in the last lag), so it adapts: a pass that finds a batch of
// the floor's priority below the floor, claimed for the first time (an
// enqueue slower than the lag, most likely), doubles it, up to
// claimFloorLagMax; a pass that finds none takes a quarter off, down to
// claimFloorLagMin.
const (
	claimFloorLagMin  = 50 * time.Millisecond
	claimFloorLagInit = 250 * time.Millisecond
	claimFloorLagMax  = 5 * time.Second
	fullScanMin       = time.Second
)

// claimPace is what the runners of one client that serve one queue share
// of their claim floors: the sweep below them, the floor's lag, and the
// reclaims' floor and sweep. One pass claims, for all of them, what waited
// below their floors, so a client's runners of a queue sweep once between
// them, not once each; and how late enqueues commit is a property of the
// producers, not of one runner.
type claimPace struct {
	mu  sync.Mutex
	lag time.Duration // 0: claimFloorLagInit

	sweep   sweep
	reclaim reclaimFloor
}

func newClaimPace() *claimPace { return &claimPace{} }

// adaptLag doubles the lag after a pass of the sweep found a batch the
// floor had missed, and takes a quarter off after a pass that found none.
func (p *claimPace) adaptLag(missed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
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

// claimKind is where a claim reads the claim index.
type claimKind uint8

const (
	claimFloored claimKind = iota // from the floor, after the batches more urgent than its priority
	claimFull                     // from the head
	claimSlice                    // from the floor, with a slice of the sweep below it
)

// claimPlan is what the next claim reads.
type claimPlan struct {
	kind     claimKind
	priority int16     // claimFloored, claimSlice: the floor
	runAt    time.Time // claimFloored, claimSlice: the floor
	slice    slice     // claimSlice
	metered  bool      // claimSlice, and some floored claims: read what the claim cost the server (see sweep)
}

// sliceHi is the upper bound of the slice as claimed: the pass's, or the
// floor if that is lower (another runner began the pass from a higher
// floor; the claim from the floor reads the rest).
func (p claimPlan) sliceHi() time.Time {
	if p.runAt.Before(p.slice.hi) {
		return p.runAt
	}
	return p.slice.hi
}

// claimCursor is a runner's claim floor. Only the claim loop uses it; its
// pace is shared (see claimPace).
type claimCursor struct {
	valid    bool
	priority int16
	runAt    time.Time
	plan     claimPlan // of the claim in flight
	pace     *claimPace
}

func (c *claimCursor) floorLag() time.Duration { return c.shared().floorLag() }

func (c *claimCursor) shared() *claimPace {
	if c.pace == nil {
		c.pace = newClaimPace()
	}
	return c.pace
}

// next returns what the next claim reads, and remembers it until done or
// failed: a full claim while the runner has no floor (at start), a slice of
// the sweep when one is due, else the floor. asked (after a reclaim of
// expired leases, or a writer change) starts the next pass of the sweep
// as soon as one may run.
func (c *claimCursor) next(now time.Time, asked bool) claimPlan {
	pace := c.shared()
	switch {
	case !c.valid:
		c.plan = claimPlan{kind: claimFull}
	default:
		if asked {
			pace.sweep.hurry()
		}
		c.plan = claimPlan{kind: claimFloored, priority: c.priority, runAt: c.runAt}
		if sl, ok := pace.sweep.next(now, c.priority, c.runAt); ok {
			c.plan.kind, c.plan.slice, c.plan.metered = claimSlice, sl, true
		} else {
			c.plan.metered = pace.sweep.wantBase()
		}
	}
	return c.plan
}

// done records a claim's result at now: the batches it took (in any
// order), whether it took all it asked for, the database's clock when the
// claim ran (its transaction's start; zero if unknown), how long its round
// trip took, and what a slice's statement cost the server. A claim takes
// the lowest claimable batches at or above the floor that no other claimer
// holds, so nothing claimable is left below the last of them but batches of
// the kinds listed above. The floor moves up to that one, but no higher
// than the claim's clock less the lag: only an enqueue that began before
// then and had not committed yet (one slower than the lag) can still
// appear below it. With a backlog deeper than the lag, the floor is the
// last batch taken itself, and a claim under an old snapshot walks only the
// entries of the batches taken since by the other claimers, not the lag's
// worth of them. A full claim that found nothing puts the floor at the
// default priority and the database's clock, less the lag: whatever is
// enqueued from then on is above it. The floor never moves down; a slice's
// batches lie below it.
func (c *claimCursor) done(now time.Time, claimed []batch.Batch, filled bool, dbNow time.Time, took time.Duration, cost sliceCost) {
	pace := c.shared()
	switch c.plan.kind {
	case claimFull:
		pace.sweep.covered(now.Add(-took))
	case claimFloored:
		if c.plan.metered {
			pace.sweep.observe(cost)
		}
	case claimSlice:
		// The slice's batches are those of the floor's priority below its
		// upper bound; it was filled if they took all the claim had room
		// for after the urgent ones.
		var below, above int
		missed := false
		for _, b := range claimed {
			switch {
			case b.Priority == c.plan.priority && b.RunAt.Before(c.plan.sliceHi()):
				below++
				missed = missed || b.Attempt == 1
			case b.Priority >= c.plan.priority:
				above++
			}
		}
		if ended, passMissed := pace.sweep.done(now, c.plan.slice, cost, filled && below > 0 && above == 0, missed, nil); ended {
			pace.adaptLag(passMissed)
		}
	}
	lag := pace.floorLag()
	var p int16
	var at time.Time
	switch {
	case len(claimed) > 0:
		last := slices.MaxFunc(claimed, func(a, b batch.Batch) int {
			return cmp.Or(cmp.Compare(a.Priority, b.Priority), a.RunAt.Compare(b.RunAt), cmp.Compare(a.ID, b.ID))
		})
		p, at = last.Priority, last.RunAt
		if dbNow.IsZero() {
			at = at.Add(-lag)
		} else if ceil := dbNow.Add(-lag); ceil.Before(at) {
			at = ceil
		}
	case c.plan.kind == claimFull && !dbNow.IsZero():
		p, at = 0, dbNow.Add(-lag)
	default:
		return
	}
	c.raise(p, at)
}

func (c *claimCursor) raise(p int16, at time.Time) {
	if !c.valid || p > c.priority || (p == c.priority && at.After(c.runAt)) {
		c.valid, c.priority, c.runAt = true, p, at
	}
}

// failed records a claim that failed at now with err. A failed slice is
// swept again, narrower. A full claim that timed out (under an old
// snapshot that kept more dead entries than a round trip can walk) does not
// repeat when the database's clock at its start is known (dbNow): the floor
// starts there, less the lag, and the sweep finds what lies below.
// A floor is kept: whatever the failed claim held (if it committed and its
// answer was lost, the runner releases it) lies at or above it.
func (c *claimCursor) failed(now, dbNow time.Time, err error) {
	pace := c.shared()
	switch c.plan.kind {
	case claimSlice:
		pace.sweep.done(now, c.plan.slice, sliceCost{}, false, false, err)
	case claimFull:
		if !dbNow.IsZero() && !c.valid {
			c.raise(0, dbNow.Add(-pace.floorLag()))
			pace.sweep.hurry()
		}
	}
}

// reclaimMargin is how far before the previous reclaim a floored reclaim
// looks: leases written by a transaction still in flight then.
const reclaimMargin = 2 * time.Second

// reclaimFloor paces reclaims of expired leases the same way; the runners
// of one client that serve one queue share it (claimPace.reclaim). Their
// scan reads the lease index (lease_expires_at of running batches), where
// the entries of every batch completed since the oldest snapshot began
// collect. A lease that expired before a reclaim began was found by it, so
// the next reclaim needs to look back only to then (and reclaimMargin
// more); one that failed or hit its limit does not move that point. Below
// it, a sweep finds leases that expired unseen (written by a transaction
// slower than the margin, or by a writer that lost the reclaims of an
// earlier one): a pass from the start, and one after a writer change.
type reclaimFloor struct {
	mu       sync.Mutex
	lastDone time.Time       // start of the last reclaim that took all it found
	changed  <-chan struct{} // the writer-change channel when it was read last
	sweep    sweep
}

// next returns the lookback of the floored reclaim at now, with changed,
// the client's current writer-change channel. The first one looks back
// reclaimMargin, and the sweep's first pass takes all below.
func (f *reclaimFloor) next(now time.Time, changed <-chan struct{}) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.changed != nil && closed(f.changed) {
		f.sweep.hurry()
	}
	f.changed = changed
	if f.lastDone.IsZero() {
		f.lastDone = now
	}
	return now.Sub(f.lastDone) + reclaimMargin
}

// floor is where a pass of the reclaim sweep starts: the lookback's end.
func (f *reclaimFloor) floor() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastDone.Add(-reclaimMargin)
}

// done records a floored reclaim that began at start and found n expired
// leases (or failed).
func (f *reclaimFloor) done(start time.Time, n int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil || n >= reclaimLimit {
		return
	}
	if start.After(f.lastDone) {
		f.lastDone = start
	}
}

// vacuumPace spaces a runner's vacuums: every VacuumInterval while they
// remove what they find, twice as far apart (up to vacuumIntervalMax) after
// each one that could not, because a snapshot still sees the dead rows.
// Vacuuming then only scans a table that keeps growing until the snapshot
// ends, on cores the queue needs.
type vacuumPace struct {
	base, every time.Duration
	failedAt    time.Time // of the last vacuum that failed, if the last failed
}

// due reports whether a vacuum may start at now. The database's record
// of the last vacuum spaces successful ones; a failed one leaves no record,
// so the pace spaces those itself.
func (p *vacuumPace) due(now time.Time) bool {
	return p.failedAt.IsZero() || now.Sub(p.failedAt) >= p.interval()
}

const vacuumIntervalMax = 2 * time.Minute

func (p *vacuumPace) interval() time.Duration { return max(p.every, p.base) }

// done records a vacuum's result, or its failure: a vacuum that failed
// (most likely it ran out of time reading a table an old snapshot keeps
// growing) counts as one that removed nothing.
func (p *vacuumPace) done(now time.Time, v vacuumResult, err error) {
	p.failedAt = time.Time{}
	if err != nil {
		p.failedAt = now
	}
	switch {
	case err != nil || v.ineffective():
		p.every = min(2*p.interval(), max(vacuumIntervalMax, p.base))
	case v.ran:
		p.every = p.base
	}
}
