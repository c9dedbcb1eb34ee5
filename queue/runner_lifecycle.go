package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/skiplock/skiplock/failover"
)

// Start checks that the queue's tables are reachable, starts listening for
// wake-ups and starts claiming. It fails fast, starting nothing, if the
// database cannot be queried. It waits (bounded by ctx, at most 5s) for the
// LISTEN connection; without it the runner still works by polling. Start
// after Stop returns ErrClosed.
func (r *Runner) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.state {
	case stateRunning:
		return fmt.Errorf("start runner %q: already started", short(r.cfg.Queue))
	case stateStopping, stateStopped:
		return fmt.Errorf("start runner %q: %w", short(r.cfg.Queue), ErrClosed)
	}
	if err := r.c.check("start runner"); err != nil {
		return err
	}
	if err := r.c.checkTables(ctx); err != nil {
		return fmt.Errorf("start runner %q: %w", short(r.cfg.Queue), err)
	}

	wake, ready, unsubscribe := r.c.subscribe(r.cfg.Queue)
	r.wake, r.unsubscribe = wake, unsubscribe
	if ready != nil {
		wait, cancel := context.WithTimeout(ctx, 5*time.Second)
		select {
		case <-ready:
		case <-wait.Done():
			r.log.Warn("LISTEN connection not ready; relying on polling until it is")
		}
		cancel()
	}

	bgCtx, bgCancel := context.WithCancel(context.Background())
	r.bgCancel = bgCancel
	r.bg.Add(5)
	go r.heartbeatLoop(bgCtx)
	go r.reconfirmLoop(bgCtx)
	go r.reclaimLoop(bgCtx)
	go r.maintainLoop(bgCtx)
	go r.fenceLoop(bgCtx)
	r.workers.Add(r.cfg.Concurrency)
	for i := 0; i < r.cfg.Concurrency; i++ {
		go r.worker()
	}
	go r.claimLoop()
	r.state = stateRunning
	r.c.register(r)
	r.log.Info("runner started",
		zap.Int("concurrency", r.cfg.Concurrency),
		zap.Int("claim_size", r.cfg.ClaimSize),
		zap.Duration("lease", r.cfg.LeaseDuration),
		zap.Bool("listening", wake != nil))
	return nil
}

// Stop shuts the runner down gracefully: it stops claiming, waits for
// running handlers until ctx is done, then cancels the remaining handlers'
// contexts (cause ErrShutdown) and waits up to FenceMargin more for them.
// Outcomes are acknowledged as handlers return; batches whose handlers were
// cancelled are released, so other runners can claim them at once. A
// handler that ignores its context past that keeps its lease until it
// expires, so no two handlers overlap. Stop returns ctx's error if it had to
// cancel handlers, or an error if some acknowledgements or handlers were
// abandoned. Stop before Start, and a second Stop, return nil.
func (r *Runner) Stop(ctx context.Context) error { return r.stop(ctx, false) }

// stop is Stop; cancel cancels every handler once no claim can start any
// more (StopAndCancel), so a batch released by a cancelled handler is not
// claimed again by this runner.
func (r *Runner) stop(ctx context.Context, cancel bool) error {
	r.mu.Lock()
	switch r.state {
	case stateNew:
		r.state = stateStopped
		close(r.stopped)
		r.mu.Unlock()
		return nil
	case stateStopping, stateStopped:
		r.mu.Unlock()
		select {
		case <-r.stopped:
		case <-ctx.Done():
		}
		return nil
	}
	r.state = stateStopping
	r.mu.Unlock()

	r.log.Info("runner stopping")
	close(r.stopClaims)
	// A claim in flight when Stop began still dispatches its batches; wait
	// for the loop to see the stop (at most one round trip), so the set of
	// handlers waited for below is complete. If ctx ends first, handlers are
	// cancelled, and so is any the claim in flight still dispatches.
	select {
	case <-r.claimsDone:
	case <-ctx.Done():
		cancel = true
	}
	var stopErr error
	if cancel {
		if ctx.Err() != nil && r.running() > 0 {
			// ctx ended with handlers running: they are cut short, and
			// Stop says so even when they return at once.
			stopErr = ctx.Err()
		}
		r.cancelAll(ErrShutdown)
	}

	allReturned := true
	handlersDone := make(chan struct{})
	go func() {
		r.handlers.Wait()
		close(handlersDone)
	}()
	select {
	case <-handlersDone:
	case <-ctx.Done():
		if r.running() == 0 {
			<-handlersDone // nothing to cut short: the last one is returning
		}
	}
	select {
	case <-handlersDone: // also when ctx was done already but nothing was running
	default:
		stopErr = ctx.Err()
		r.cancelAll(ErrShutdown)
		grace := time.NewTimer(r.cfg.FenceMargin)
		select {
		case <-handlersDone:
		case <-grace.C:
			allReturned = false
			n := r.running()
			r.log.Warn("handlers ignored cancellation; their leases will expire", zap.Int("handlers", n))
			stopErr = fmt.Errorf("stop runner %q: %d handlers still running after cancellation: %w", short(r.cfg.Queue), n, ctx.Err())
		}
		grace.Stop()
	}

	// Let the claim loop acknowledge the outcomes. Releases must go out even
	// when ctx has already expired, so past ctx there is one round-trip
	// timeout of grace before the rest is left to lease expiry.
	select {
	case <-r.loopDone:
	case <-ctx.Done():
		grace := time.NewTimer(r.rtTimeout)
		select {
		case <-r.loopDone:
		case <-grace.C:
			close(r.abandon)
			<-r.loopDone
		}
		grace.Stop()
	}
	if n := r.unacknowledged(); n > 0 && stopErr == nil {
		stopErr = fmt.Errorf("stop runner %q: %d outcomes not acknowledged; their leases will expire", short(r.cfg.Queue), n)
	}

	if n := r.flushCompletions(ctx); n > 0 {
		err := fmt.Errorf("stop runner %q: %d completions acknowledged by a replaced writer could not be asserted on the current one; those batches may run again: %w",
			short(r.cfg.Queue), n, ErrNotReasserted)
		r.log.Error("stopping with journaled completions not asserted on the current writer", zap.Int("pending", n))
		stopErr = errors.Join(stopErr, err)
	}

	r.bgCancel()
	r.bg.Wait()
	close(r.work)
	if allReturned {
		r.workers.Wait() // every handler returned, so every worker exits
	}
	r.unsubscribe()
	r.cancelAll(ErrShutdown)

	r.mu.Lock()
	r.state = stateStopped
	r.mu.Unlock()
	r.c.unregister(r)
	close(r.stopped)
	st := r.Stats()
	r.log.Info("runner stopped",
		zap.Int64("claimed", st.Claimed), zap.Int64("completed", st.Completed),
		zap.Int64("retried", st.Retried), zap.Int64("dead", st.Dead),
		zap.Int64("released", st.Released), zap.Int64("lease_lost", st.LeaseLost))
	return stopErr
}

// flushCompletions asserts journaled completions that a writer change left
// pending, within ctx (or one round-trip timeout if ctx is done), and
// returns how many are still pending.
func (r *Runner) flushCompletions(ctx context.Context) int {
	if _, pending := r.c.done.counts(); pending == 0 {
		return 0
	}
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), r.rtTimeout)
		defer cancel()
	}
	return r.c.done.flush(ctx, r.c.assertCompletions)
}

// cancelAll cancels the context of every running handler.
func (r *Runner) cancelAll(cause error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cancelledAll = true
	for _, j := range r.inflight {
		j.cancel(cause)
	}
}

// StopAndCancel stops claiming and then, once a claim in flight (at most one
// round trip) has dispatched its batches, cancels every running handler's
// context (cause ErrShutdown), and stops as Stop does. Cancelling only once
// claims have stopped keeps a batch its cancelled handler released from being
// claimed again by this runner.
func (r *Runner) StopAndCancel(ctx context.Context) error {
	r.mu.Lock()
	stopping := r.state == stateStopping
	r.mu.Unlock()
	if stopping {
		r.cancelAll(ErrShutdown) // a Stop in progress: cancel its handlers now
	}
	return r.stop(ctx, true)
}

// Stopped returns a channel closed once Stop has finished.
func (r *Runner) Stopped() <-chan struct{} { return r.stopped }

// reclaimLoop makes expired leases of the queue claimable again.
func (r *Runner) reclaimLoop(ctx context.Context) {
	defer r.bg.Done()
	t := time.NewTicker(r.cfg.ReclaimInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if r.holdReclaims() {
				continue
			}
			err := r.reclaimRound(ctx)
			if err != nil && !errors.Is(err, errReclaimHeld) && ctx.Err() == nil {
				r.log.Warn("reclaim of expired leases failed", zap.Error(err))
			}
		}
	}
}

// maintainLoop vacuums the hot table, and prunes old completion records
// and keys now and then. It has a loop of its own: under an old snapshot a
// vacuum reads a table that only grows, for as long as a round trip may
// take, and reclaims must not wait for it.
func (r *Runner) maintainLoop(ctx context.Context) {
	defer r.bg.Done()
	var pruneC, vacuumC <-chan time.Time
	pace := vacuumPace{base: r.cfg.VacuumInterval}
	if r.cfg.PruneInterval > 0 {
		pt := time.NewTicker(r.cfg.PruneInterval)
		defer pt.Stop()
		pruneC = pt.C
	}
	if r.cfg.VacuumInterval > 0 {
		vt := time.NewTicker(r.cfg.VacuumInterval)
		defer vt.Stop()
		vacuumC = vt.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-vacuumC:
			t0 := time.Now()
			if !pace.due(t0) {
				continue
			}
			v, err := r.c.vacuum(ctx, pace.interval())
			pace.done(time.Now(), v, err)
			switch {
			case errors.Is(err, ErrVacuumNotPermitted):
				r.log.Warn("cannot vacuum the batch table; leaving it to autovacuum", zap.Error(err))
				vacuumC = nil
			case err != nil:
				if ctx.Err() == nil {
					r.log.Warn("vacuum failed", zap.Error(err), zap.Duration("next_in", pace.interval()))
				}
			case v.ineffective():
				r.log.Info("vacuum of the batch table removed little: a snapshot still sees the dead rows; vacuuming less often until it ends",
					zap.Int64("dead_before", v.deadBefore), zap.Int64("dead_after", v.deadAfter), zap.Duration("next_in", pace.interval()))
			case v.ran:
				r.log.Debug("vacuumed the batch table", zap.Duration("took", time.Since(t0)))
			}
		case <-pruneC:
			done, keys, err := r.c.Prune(ctx)
			if err != nil {
				if ctx.Err() == nil {
					r.log.Warn("prune failed", zap.Error(err))
				}
				continue
			}
			r.log.Debug("pruned", zap.Int64("completion_records", done), zap.Int64("keys", keys))
		}
	}
}

// reclaimRound reclaims the queue's expired leases: those that expired
// since the last reclaim (and reclaimMargin before it), then the slices of
// the sweep below that are due within half a reclaim interval.
func (r *Runner) reclaimRound(ctx context.Context) error {
	f := &r.pace.reclaim
	start := time.Now()
	lookback := f.next(start, r.c.writerChanged())
	// The hold is asked again before every retry: a reclaim that retried
	// through an outage would land the moment it ends.
	avail, dead, err := r.c.reclaimExpired(ctx, r.cfg.Queue, lookback, 0, r.holdReclaims)
	if errors.Is(err, errReclaimHeld) {
		return err
	}
	f.done(start, avail+dead, err)
	r.noteReclaimed(avail, dead)
	if err != nil {
		return err
	}
	until := start.Add(r.cfg.ReclaimInterval / 2)
	for {
		now := time.Now()
		sl, ok := f.sweep.next(now, 0, f.floor())
		if !ok {
			due := f.sweep.dueAt()
			if !due.After(now) || due.After(until) {
				return nil // no pass due yet, or the next slice is for a later round
			}
			t := time.NewTimer(due.Sub(now))
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
			continue
		}
		older, newer := reclaimAll, max(now.Sub(sl.hi), 0)
		if !sl.bottom() {
			older = now.Sub(sl.lo)
		}
		avail, dead, cost, err := r.c.reclaimSlice(ctx, r.cfg.Queue, older, newer, r.holdReclaims)
		if errors.Is(err, errReclaimHeld) {
			f.sweep.abandon()
			return err
		}
		f.sweep.done(time.Now(), sl, cost, avail+dead >= reclaimLimit, false, err)
		r.noteReclaimed(avail, dead)
		if err != nil {
			return err
		}
	}
}

// noteReclaimed counts, reports and logs reclaimed leases, and has the
// claim loop sweep below its floor for them: they keep their place in line.
func (r *Runner) noteReclaimed(avail, dead int) {
	if avail+dead == 0 {
		return
	}
	r.stats.reclaimed.Add(int64(avail + dead))
	if r.events != nil {
		r.events.emit(Event{Kind: EventReclaimed, Queue: r.cfg.Queue, Count: avail + dead})
	}
	r.log.Info("reclaimed expired leases", zap.Int("available", avail), zap.Int("dead", dead))
	r.sweepAsked.Store(true)
	wakeUp(r.kick)
}

// reclaimHold is how long after the runner last failed to reach a writer
// (or saw the writer change) it leaves expired leases alone. Leases expire
// while no one can reach a writer — a blackhole, a failover, 20 s with no
// writer — although their owners are alive and may hold finished outcomes;
// reclaiming them the moment the writer is back races those owners and
// runs finished batches again. The owners need one round trip: their claim
// loops retry at once on a writer change and within 250 ms otherwise, and
// re-confirm their leases on a writer change. A runner in another process
// that never lost the writer reclaims as usual: for it the owner really
// was gone for a whole lease.
const reclaimHold = 2 * time.Second

// noteTrouble records a failure to reach a writer (see reclaimHold).
func (r *Runner) noteTrouble(err error) {
	if failover.Classify(err).Transient() {
		r.troubleAt.Store(time.Now().UnixNano())
	}
}

// holdReclaims reports whether reclaims hold off (see reclaimHold).
func (r *Runner) holdReclaims() bool {
	at := r.troubleAt.Load()
	return at != 0 && time.Since(time.Unix(0, at)) < reclaimHold
}
