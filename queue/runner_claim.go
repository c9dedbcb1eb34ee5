package queue

import (
	"context"
	"errors"
	"math"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"go.uber.org/zap"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
)

// claimLoop is the runner's single owner of claims and acknowledgements. Each
// round trip carries every outcome reported since the previous one together
// with the next claim, so under load one round trip both finishes and starts
// up to ClaimSize batches.
func (r *Runner) claimLoop() {
	defer close(r.loopDone)
	var claimsDoneOnce sync.Once
	claimsDone := func() { claimsDoneOnce.Do(func() { close(r.claimsDone) }) }
	defer claimsDone()
	var (
		free      = r.cfg.Concurrency
		threshold = max(1, min(r.cfg.ClaimSize, r.cfg.Concurrency)/2)
		pending   []*job
		want      = true  // something suggests work is available
		backlog   = false // the last claim was full
		// acksAlone: the last round trip failed. Outcomes go alone before
		// the next claim: they ride in one transaction with it, and
		// whatever made it fail (a slice of the sweep that timed out, a
		// release of lost claims) must not hold them back, again and
		// again, until their leases expire and the batches run twice.
		acksAlone = false
		stopping  = false
		retryC    <-chan time.Time
		bo        = newBackOff(25*time.Millisecond, time.Second)
		poll      = time.NewTicker(r.cfg.PollInterval)
		watcher   WriterWatcher
		changed   <-chan struct{}
	)
	if w, ok := r.c.db.(WriterWatcher); ok {
		watcher, changed = w, w.WriterChanged()
	}
	defer poll.Stop()
	collect := func(j *job) {
		pending = append(pending, j)
		free++
	}
	// giveUp is the end once Stop stops waiting (r.abandon): one last attempt
	// to acknowledge what is pending, then the rest is left to lease expiry.
	giveUp := func() {
		for done := false; !done; {
			select {
			case j := <-r.results:
				collect(j)
			default:
				done = true
			}
		}
		if len(pending) > 0 {
			if _, _, _, err := r.roundTrip(pending, 0, false); err != nil {
				r.log.Error("could not acknowledge outcomes before giving up; their leases will expire",
					zap.Int("batches", len(pending)), zap.Error(err))
			}
		}
	}

	for {
		// Checked on every pass, not only while idle: round trips that fail
		// at once with no writer to wait for retry without idling, and
		// would otherwise never see it.
		select {
		case <-r.abandon:
			giveUp()
			return
		default:
		}
		if !stopping {
			select {
			case <-r.stopClaims: // noticed before anything else, so no claim starts after it
				stopping = true
				claimsDone()
			default:
			}
		}
		busy := r.cfg.Concurrency - free
		canClaim := !stopping && free > 0 && (want || backlog) && (free >= threshold || busy == 0)
		if retryC == nil && (len(pending) > 0 || canClaim || (!stopping && r.cleanupDue())) {
			n := 0
			if canClaim && !(acksAlone && len(pending) > 0) {
				n = min(free, r.cfg.ClaimSize)
			}
			claimed, sent, retry, err := r.roundTrip(pending, n, acksAlone && len(pending) > 0)
			acksAlone = err != nil
			if err != nil {
				r.stats.roundTripErrors.Add(1)
				r.noteTrouble(err)
				d := retryDelay(bo, err, time.Since(sent))
				r.log.Warn("claim round trip failed; retrying", zap.Error(err), zap.Duration("retry_in", d), zap.Int("pending_acks", len(pending)))
				if d == 0 {
					continue
				}
				retryC = time.After(d)
			} else {
				bo.Reset()
				pending = retry
				if n > 0 {
					want = false
					backlog = len(claimed) == n
					free -= len(claimed)
					r.dispatch(claimed, sent)
				}
				continue
			}
		}
		if stopping && len(pending) == 0 && free == r.cfg.Concurrency {
			return
		}
		var stopC <-chan struct{}
		if !stopping {
			stopC = r.stopClaims
		}
		select {
		case j := <-r.results:
			collect(j)
		drain:
			for {
				select {
				case j := <-r.results:
					collect(j)
				default:
					break drain
				}
			}
		case <-r.wake:
			want = true
		case <-r.kick:
			want = true
		case <-poll.C:
			want = true
		case <-retryC:
			retryC = nil
		case <-changed:
			// A new writer: retry at once instead of waiting out the backoff,
			// once the journals know (see finishedBefore).
			r.c.advance(changed)
			changed = watcher.WriterChanged()
			r.troubleAt.Store(time.Now().UnixNano())
			r.cursor.shared().sweep.hurry() // re-asserted batches may sit anywhere in line
			retryC = nil
			want = true
			bo.Reset()
		case <-stopC:
			stopping = true
			claimsDone()
		case <-r.abandon:
			giveUp()
			return
		}
	}
}

// Retry delays of the claim loop after a failed round trip.
const (
	// connRetryMax caps the backoff after errors that say the database may
	// be failing over, so the first claim on a writer that is back comes
	// soon (the writer-changed signal resets the backoff anyway).
	connRetryMax = 250 * time.Millisecond
	// minRetryGap keeps a round trip that failed at once from spinning.
	minRetryGap = 25 * time.Millisecond
)

// retryDelay is how long the claim loop waits after a round trip that
// failed with err after took. A *failover.NoWriterError means the pool has
// already waited for a writer (WriterWait): retry at once.
func retryDelay(bo *backoff.ExponentialBackOff, err error, took time.Duration) time.Duration {
	d := bo.NextBackOff()
	var nw *failover.NoWriterError
	switch {
	case errors.As(err, &nw):
		if took >= minRetryGap {
			return 0
		}
		return minRetryGap
	case worthRepeating(err):
		return min(d, connRetryMax)
	}
	return d
}

func newBackOff(initial, maxInterval time.Duration) *backoff.ExponentialBackOff {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = initial
	bo.MaxInterval = maxInterval
	bo.MaxElapsedTime = 0 // never give up; callers bound retries by context
	bo.Reset()
	return bo
}

// roundTrip acknowledges the outcomes of finished jobs and claims up to n
// more batches, in one pipelined round trip (one transaction). Unless
// acksOnly, it also releases what lost claims and re-taken leases hold. On
// error nothing is known to have happened and every job stays pending.
// retry lists jobs whose outcome must be sent again.
func (r *Runner) roundTrip(finished []*job, n int, acksOnly bool) (claimed []batch.Batch, sent time.Time, retry []*job, err error) {
	var completes, fails, releases []*job
	var a acks
	var ids map[int64]bool
	if len(finished) > 1 {
		ids = make(map[int64]bool, len(finished))
	}
	for _, j := range finished {
		if ids != nil {
			// Outcomes are matched to jobs by batch id: two claims of one
			// batch (an old one whose lease was lost, a new one) go in
			// separate round trips.
			if ids[j.ref.ID] {
				retry = append(retry, j)
				continue
			}
			ids[j.ref.ID] = true
		}
		switch j.result {
		case outcomeComplete:
			completes = append(completes, j)
			a.completes = append(a.completes, j.ref)
		case outcomeRelease:
			releases = append(releases, j)
			a.releases = append(a.releases, j.ref)
		default:
			fails = append(fails, j)
			a.fails = append(a.fails, failRow{Ref: j.ref, Text: j.text, Permanent: j.permanent})
		}
	}

	sql := r.c.sql
	b := &pgx.Batch{}
	b.Queue(sqlNoJIT)
	a.queue(r.c, b)
	var lostTokens []int64
	var orphans []Ref
	if !acksOnly {
		lostTokens, orphans = r.lostClaimTokens(), r.settledOrphans()
	}
	if len(lostTokens) > 0 {
		b.Queue(sql.releaseTokens, lostTokens, lostClaimLookback(r.lostClaims[0].sent, r.cfg.LeaseDuration).Microseconds())
	}
	if len(orphans) > 0 {
		ids, tokens := refArrays(orphans)
		b.Queue(sql.release, ids, tokens)
	}
	token := newToken()
	epoch, changed := r.c.done.epochNow(), r.c.writerChanged()
	r.claimEpoch = epoch
	var plan claimPlan
	if n > 0 {
		plan = r.cursor.next(time.Now(), r.sweepAsked.Swap(false))
		lease := r.cfg.LeaseDuration.Microseconds()
		switch plan.kind {
		case claimFull:
			b.Queue(sql.claim, r.cfg.Queue, n, token, r.cfg.Owner, lease)
			b.Queue(sql.now)
		case claimSlice:
			lo := pgtype.Timestamptz{Time: plan.slice.lo, Valid: true}
			if plan.slice.bottom() {
				lo = pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}
			}
			b.Queue(sql.meter, sql.claimIndex)
			b.Queue(sql.claimSlice, r.cfg.Queue, n, token, r.cfg.Owner, lease, plan.priority, plan.runAt, lo, plan.sliceHi())
			b.Queue(sql.meter, sql.claimIndex)
		default:
			if plan.metered {
				b.Queue(sql.meter, sql.claimIndex)
			}
			b.Queue(sql.claimFrom, r.cfg.Queue, n, token, r.cfg.Owner, lease, plan.priority, plan.runAt)
			if plan.metered {
				b.Queue(sql.meter, sql.claimIndex)
			}
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), r.rtTimeout)
	defer cancel()
	sent = time.Now()
	br := r.c.db.SendBatch(ctx, b)
	_, err = br.Exec() // sqlNoJIT
	var res ackResult
	if err == nil {
		res, err = a.read(br)
	}
	var freed map[int64]bool
	if len(lostTokens) > 0 && err == nil {
		freed, err = idSet(br.Query())
	}
	var orphansFreed map[int64]bool
	if len(orphans) > 0 && err == nil {
		orphansFreed, err = idSet(br.Query())
	}
	var dbNow time.Time
	var before, after meterReading
	if n > 0 && err == nil {
		if plan.metered {
			before, err = readMeter(br)
		}
		var rows pgx.Rows
		if err == nil {
			if rows, err = br.Query(); err == nil {
				claimed, err = collectBatches(rows, n, r.cfg.Queue)
			}
		}
		if err == nil {
			switch {
			case plan.kind == claimFull:
				err = br.QueryRow().Scan(&dbNow)
			case plan.metered:
				after, err = readMeter(br)
			}
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if n > 0 {
		if err != nil {
			if plan.kind == claimFull && errors.Is(err, context.DeadlineExceeded) {
				dbNow = r.clockBefore(sent)
			}
			r.cursor.failed(time.Now(), dbNow, err)
		} else {
			if dbNow.IsZero() && len(claimed) > 0 {
				// The claim's clock: its leases run from its transaction's
				// start (sql.claimFrom and the others).
				dbNow = claimed[0].Lease.ExpiresAt.Add(-r.cfg.LeaseDuration)
			}
			r.cursor.done(time.Now(), claimed, len(claimed) == n, dbNow, time.Since(sent), before.costTo(after))
			switch plan.kind {
			case claimFull:
				r.stats.fullClaims.Add(1)
			case claimSlice:
				r.stats.sliceClaims.Add(1)
			default:
				r.stats.flooredClaims.Add(1)
			}
		}
	}
	if err != nil {
		if n > 0 && !failedForSure(err) {
			// The claim may have committed: its batches would stay held
			// until their lease expires. The token is ours, so release
			// whatever it holds on the next round trip.
			r.lostClaims = append(r.lostClaims, lostClaim{token: token, sent: sent})
		}
		return nil, sent, nil, err
	}
	r.forgetCleanup(len(lostTokens), orphans)
	if len(freed)+len(orphansFreed) > 0 {
		r.stats.released.Add(int64(len(freed) + len(orphansFreed)))
		if r.events != nil {
			r.events.emit(Event{Kind: EventReleased, Queue: r.cfg.Queue, Count: len(freed) + len(orphansFreed)})
		}
		r.log.Info("released batches of claims whose answer was lost",
			zap.Int("lost_claims", len(lostTokens)), zap.Int("batches", len(freed)), zap.Int("re_taken_orphans", len(orphansFreed)))
	}

	completed := res.completed
	// Completions not applied may be repeats of one that committed before
	// an earlier round trip failed; those are successes.
	var notDone []Ref
	for _, j := range completes {
		if !completed[j.ref.ID] {
			notDone = append(notDone, j.ref)
		}
	}
	if len(notDone) > 0 {
		lost, err := r.c.completeRepeat(ctx, r.c.db, notDone)
		if err != nil {
			// The claim committed; keep its batches and retry these acks.
			r.log.Warn("could not check repeated completions; retrying", zap.Error(err))
			kept := completes[:0:0]
			for _, j := range completes {
				if completed[j.ref.ID] {
					kept = append(kept, j)
				} else {
					retry = append(retry, j)
				}
			}
			completes = kept
		} else {
			lostSet := map[int64]bool{}
			for _, l := range lost {
				lostSet[l.ID] = true
			}
			for _, ref := range notDone {
				if !lostSet[ref.ID] {
					completed[ref.ID] = true
				}
			}
		}
	}
	r.settle(epoch, closed(changed), completes, completed, fails, res.failed, releases, res.released)
	return claimed, sent, retry, nil
}

// clockBefore returns the database's clock at t (local), or zero if the
// database cannot tell within a round trip's timeout: where the floor
// starts after a full claim that timed out (see claimCursor.failed).
func (r *Runner) clockBefore(t time.Time) time.Time {
	ctx, cancel := context.WithTimeout(context.Background(), r.rtTimeout)
	defer cancel()
	var now time.Time
	if err := r.c.db.QueryRow(ctx, r.c.sql.now).Scan(&now); err != nil {
		return time.Time{}
	}
	return now.Add(-time.Since(t))
}

// lostClaim is a claim whose round trip failed after it may have reached
// the database.
type lostClaim struct {
	token int64
	sent  time.Time
}

// lostClaimTokens returns the tokens of lost claims whose leases may still
// hold batches (older ones have expired and are reclaimed anyway).
func (r *Runner) lostClaimTokens() []int64 {
	cut := 0
	for cut < len(r.lostClaims) && time.Since(r.lostClaims[cut].sent) > r.cfg.LeaseDuration {
		cut++
	}
	r.lostClaims = r.lostClaims[cut:]
	if len(r.lostClaims) == 0 {
		r.lostClaims = nil
		return nil
	}
	tokens := make([]int64, len(r.lostClaims))
	for i, l := range r.lostClaims {
		tokens[i] = l.token
	}
	return tokens
}

// settledOrphans returns the re-taken leases whose jobs have been settled.
func (r *Runner) settledOrphans() []Ref {
	if r.orphanN.Load() == 0 {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var refs []Ref
	for ref := range r.orphans {
		if r.inflight[ref] == nil {
			refs = append(refs, ref)
		}
	}
	return refs
}

// forgetCleanup drops the first n lost claims and the orphans a round trip
// has released.
func (r *Runner) forgetCleanup(n int, orphans []Ref) {
	r.lostClaims = r.lostClaims[n:]
	if len(orphans) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ref := range orphans {
		delete(r.orphans, ref)
	}
	r.orphanN.Store(int32(len(r.orphans)))
}

// cleanupDue reports whether a round trip has leases to release although
// it has no outcome to acknowledge and no claim to make.
func (r *Runner) cleanupDue() bool {
	return len(r.lostClaims) > 0 || len(r.settledOrphans()) > 0
}

func refsOf(jobs []*job) []Ref {
	refs := make([]Ref, len(jobs))
	for i, j := range jobs {
		refs[i] = j.ref
	}
	return refs
}

// settle records acknowledged outcomes and forgets their jobs. Completions
// are journaled; if the writer changed while they were under way (epoch is
// when the round trip started), the journal asserts them on the new writer.
func (r *Runner) settle(epoch int64, changed bool, completes []*job, completed map[int64]bool, fails []*job, failRes map[int64]bool, releases []*job, released map[int64]bool) {
	lost := 0
	var journaled, orphaned []Completion
	var ev *settleEvents
	if r.events != nil {
		ev = &settleEvents{}
		ev.sizes = [...]int{len(completes), len(fails), len(fails), len(releases), len(completes) + len(fails) + len(releases)}
		defer ev.emit(r.events, r.cfg.Queue)
	}
	for _, j := range completes {
		c := Completion{Ref: j.ref, CreatedAt: j.b.CreatedAt, Queue: j.b.Queue, Key: j.b.IdempotencyKey, Attempt: j.b.Attempt}
		switch {
		case completed[j.ref.ID]:
			r.stats.completed.Add(1)
			ev.add(evCompleted, j)
			journaled = append(journaled, c)
		case j.epoch != epoch || changed:
			// The handler finished a batch claimed on a writer that has
			// been replaced since, and the new writer does not know the
			// claim (a failover lost it). Asserting the completion on the
			// current writer, by id or by key, records the work that was
			// done instead of running the batch again.
			r.stats.completed.Add(1)
			ev.add(evCompleted, j)
			orphaned = append(orphaned, c)
		default:
			lost++
			ev.add(evLost, j)
			r.log.Warn("completion refused: lease lost", zap.Int64("batch", j.ref.ID))
		}
	}
	if len(orphaned) > 0 {
		r.log.Info("completions of batches claimed on a replaced writer handed to the journal", zap.Int("batches", len(orphaned)))
		r.c.done.add(epoch, true, orphaned...)
	}
	for _, j := range fails {
		dead, ok := failRes[j.ref.ID]
		switch {
		case !ok:
			lost++
			ev.add(evLost, j)
			r.log.Warn("failure not recorded: lease lost", zap.Int64("batch", j.ref.ID), zap.String("error", j.text))
		case dead:
			r.stats.dead.Add(1)
			ev.add(evDead, j)
			r.log.Warn("batch dead-lettered", zap.Int64("batch", j.ref.ID), zap.Int("attempt", j.b.Attempt), zap.String("error", j.text))
		default:
			r.stats.retried.Add(1)
			ev.add(evRetried, j)
			r.log.Debug("batch failed; will retry", zap.Int64("batch", j.ref.ID), zap.Int("attempt", j.b.Attempt), zap.String("error", j.text))
		}
	}
	for _, j := range releases {
		if released[j.ref.ID] {
			r.stats.released.Add(1)
			ev.add(evReleased, j)
		} else {
			lost++
			ev.add(evLost, j)
		}
	}
	r.stats.leaseLost.Add(int64(lost))
	r.c.done.add(epoch, changed, journaled...)

	r.mu.Lock()
	defer r.mu.Unlock()
	for _, group := range [][]*job{completes, fails, releases} {
		for _, j := range group {
			delete(r.inflight, j.ref)
		}
	}
}

// dispatch hands each claimed batch to a handler goroutine. sent is when
// the claim was sent: the database computed each lease's expiry after that
// moment, so sent+LeaseDuration is never later than the real expiry.
func (r *Runner) dispatch(claimed []batch.Batch, sent time.Time) {
	if len(claimed) == 0 {
		return
	}
	r.stats.claimed.Add(int64(len(claimed)))
	if r.events != nil {
		bs := make([]EventBatch, len(claimed))
		for i := range claimed {
			bs[i] = EventBatch{ID: claimed[i].ID, Attempt: claimed[i].Attempt, CreatedAt: claimed[i].CreatedAt}
		}
		r.events.emit(Event{Kind: EventClaimed, Queue: r.cfg.Queue, Count: len(bs), Batches: bs})
	}
	r.log.Debug("claimed", zap.Int("batches", len(claimed)))
	fenceAt := r.clock(sent.Add(r.cfg.LeaseDuration - r.cfg.FenceMargin))
	var done []Completion // completions pending re-assertion after a writer change
	if r.c.settling() {
		done, _, _ = r.c.done.takePending(math.MaxInt)
	}
	jobs := make([]job, len(claimed))
	r.mu.Lock()
	for i := range claimed {
		j := &jobs[i]
		j.b = claimed[i]
		j.ref = RefOf(&j.b)
		j.epoch = r.claimEpoch
		if len(done) > 0 && finishedBefore(done, &j.b) {
			j.finished = true
			r.stats.finishedBefore.Add(1)
		}
		// Each handler context is a root of its own: a shared parent would
		// make every handler start and end contend on its lock.
		j.ctx, j.cancel = context.WithCancelCause(context.Background())
		if r.cancelledAll {
			j.cancel(ErrShutdown)
		}
		j.fenceAt.Store(fenceAt)
		r.inflight[j.ref] = j
	}
	r.handlers.Add(len(claimed))
	r.mu.Unlock()
	for i := range jobs {
		r.work <- &jobs[i] // never blocks: at most Concurrency jobs are out
	}
	// A new claim's fence is never earlier than one already armed, so the
	// fence loop needs a nudge only when it has nothing armed (or only later
	// handler deadlines).
	if fenceAt < r.fenceNext.Load() {
		wakeUp(r.fenceKick)
	}
}

// clock returns t on the runner's monotonic clock, in nanoseconds.
func (r *Runner) clock(t time.Time) int64 { return int64(t.Sub(r.epoch)) }

// finishedBefore reports whether b is the batch of a completion the client
// acknowledged on an earlier writer and has yet to assert on this one (same
// id and creation time, or same queue and idempotency key): the new writer
// lost that completion, and running b again would deliver it twice. The
// runner completes such a batch under its new claim without running it.
func finishedBefore(done []Completion, b *batch.Batch) bool {
	for i := range done {
		c := &done[i]
		if (c.Ref.ID == b.ID && c.CreatedAt.Equal(b.CreatedAt)) ||
			(c.Key != "" && c.Key == b.IdempotencyKey && c.Queue == b.Queue) {
			return true
		}
	}
	return false
}

// settleEvents gathers the events of one settle, when the client has an
// OnEvent hook (a nil *settleEvents gathers nothing).
type settleEvents struct {
	lists [len(settleKinds)][]EventBatch
	sizes [len(settleKinds)]int // the most each list can get: its capacity
}

// The lists of settleEvents, in the order their events go out.
const (
	evCompleted = iota
	evRetried
	evDead
	evReleased
	evLost
)

var settleKinds = [...]EventKind{EventCompleted, EventRetried, EventDeadLettered, EventReleased, EventLeaseLost}

func (ev *settleEvents) add(list int, j *job) {
	if ev == nil {
		return
	}
	if ev.lists[list] == nil {
		ev.lists[list] = make([]EventBatch, 0, ev.sizes[list])
	}
	ev.lists[list] = append(ev.lists[list], EventBatch{ID: j.ref.ID, Attempt: j.b.Attempt, CreatedAt: j.b.CreatedAt, Error: j.text})
}

// emit sends one event per kind that has batches.
func (ev *settleEvents) emit(s *eventSink, queue string) {
	for i, bs := range ev.lists {
		if len(bs) > 0 {
			s.emit(Event{Kind: settleKinds[i], Queue: queue, Count: len(bs), Batches: bs})
		}
	}
}
