package queue

import (
	"context"
	"math"
	"time"

	"go.uber.org/zap"
)

// fenceLoop cancels the context of every handler whose lease could not be
// renewed in time: FenceMargin before the lease's expiry as the runner can
// bound it. It also keeps the handlers' own deadlines (handlerDeadline):
// the handler timeout, and the grace after which a handler that ignores
// its cancelled context is abandoned. It sleeps until the earliest deadline
// of any running handler; renewals only move fences later, so a wake-up
// that finds nothing due just sleeps again.
func (r *Runner) fenceLoop(ctx context.Context) {
	defer r.bg.Done()
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.fenceKick:
		}
		now := r.clock(time.Now())
		next := int64(math.MaxInt64)
		var abandoned []*job
		r.mu.Lock()
		for _, j := range r.inflight {
			if j.done.Load() {
				continue
			}
			if !j.fenced.Load() {
				if at := j.fenceAt.Load(); at <= now {
					j.fenced.Store(true)
					j.cancel(ErrLeaseNotRenewed)
					j.cancelledAt.CompareAndSwap(0, max(now, 1))
					r.log.Warn("lease not renewed in time; cancelling handler", zap.Int64("batch", j.ref.ID))
				} else {
					next = min(next, at)
				}
			}
			if at, give := r.handlerDeadline(j, now); give {
				abandoned = append(abandoned, j)
			} else {
				next = min(next, at)
			}
		}
		r.fenceNext.Store(next)
		r.mu.Unlock()
		r.abandonHandlers(abandoned)
		if next != math.MaxInt64 {
			t.Reset(time.Duration(next - now))
		}
	}
}

// heartbeatLoop renews every held lease in one statement per interval (see
// renew). A renewal moves each handler's fence deadline; a lease found lost
// cancels its handler at once.
func (r *Runner) heartbeatLoop(ctx context.Context) {
	defer r.bg.Done()
	t := time.NewTicker(r.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		jobs := r.held()
		if len(jobs) == 0 {
			continue
		}
		opCtx, cancel := context.WithTimeout(ctx, min(r.cfg.HeartbeatInterval, r.rtTimeout))
		err := r.renew(opCtx, jobs)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.stats.heartbeatErrors.Add(1)
			r.noteTrouble(err)
			r.log.Warn("lease renewal failed", zap.Int("batches", len(jobs)), zap.Error(err))
		}
	}
}

// held returns the jobs whose leases the runner holds.
func (r *Runner) held() []*job {
	r.mu.Lock()
	defer r.mu.Unlock()
	jobs := make([]*job, 0, len(r.inflight))
	for _, j := range r.inflight {
		jobs = append(jobs, j)
	}
	return jobs
}

// renew re-confirms the leases of jobs in one statement: leases still held
// are extended, and a batch the writer has available with no lease — our
// claim was lost with commits a failover dropped — is re-taken under the
// same token if its handler is still running (unfenced). Kept leases move
// their fence deadlines; every other handler is cancelled at once with
// cause ErrLeaseLost.
func (r *Runner) renew(ctx context.Context, jobs []*job) error {
	perID := make(map[int64]int, len(jobs))
	for _, j := range jobs {
		perID[j.ref.ID]++
	}
	held := make([]heldLease, len(jobs))
	for i, j := range jobs {
		held[i] = heldLease{
			Ref:       j.ref,
			CreatedAt: j.b.CreatedAt,
			// Two claims of one batch: re-take neither, the old one lost it.
			Retake: perID[j.ref.ID] == 1 && !j.done.Load() && !j.fenced.Load() && !j.lost.Load(),
		}
	}
	sent := time.Now()
	kept, retaken, err := r.c.reconfirmLeases(ctx, held, r.cfg.LeaseDuration, r.cfg.Owner)
	if err != nil {
		return err
	}
	fenceAt := r.clock(sent.Add(r.cfg.LeaseDuration - r.cfg.FenceMargin))
	var extended []EventBatch
	for _, j := range jobs {
		switch {
		case kept[j.ref]:
			j.fenceAt.Store(fenceAt)
			if r.events != nil {
				extended = append(extended, EventBatch{ID: j.ref.ID, Attempt: j.b.Attempt, CreatedAt: j.b.CreatedAt})
			}
			if retaken[j.ref] {
				r.stats.retaken.Add(1)
				r.log.Warn("re-took a batch whose claim the writer had lost", zap.Int64("batch", j.ref.ID))
			}
		case j.done.Load():
		default:
			if !j.lost.Swap(true) {
				r.log.Warn("lease lost; cancelling handler", zap.Int64("batch", j.ref.ID))
			}
			j.cancel(ErrLeaseLost)
			if j.cancelledAt.CompareAndSwap(0, max(r.clock(time.Now()), 1)) {
				wakeUp(r.fenceKick) // arms the handler's grace
			}
		}
	}
	if len(retaken) > 0 {
		// A handler that finished meanwhile may have had its outcome
		// applied before the re-take: release such leases once settled.
		r.mu.Lock()
		for ref := range retaken {
			if j := r.inflight[ref]; j == nil || j.done.Load() {
				r.orphans[ref] = true
			}
		}
		r.orphanN.Store(int32(len(r.orphans)))
		r.mu.Unlock()
	}
	if len(extended) > 0 {
		r.events.emit(Event{Kind: EventLeaseExtended, Queue: r.cfg.Queue, Count: len(extended), Batches: extended})
	}
	r.log.Debug("leases renewed", zap.Int("batches", len(kept)), zap.Int("re_taken", len(retaken)))
	return nil
}

// reconfirmLoop re-confirms every held lease at once when the writer
// changes (the DB is a WriterWatcher), instead of at the next heartbeat: a
// new writer that lost our recent commits may lack a claim or an extension,
// and another runner may claim the batch at once.
func (r *Runner) reconfirmLoop(ctx context.Context) {
	defer r.bg.Done()
	w, ok := r.c.db.(WriterWatcher)
	if !ok {
		return
	}
	changed := w.WriterChanged()
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		changed = w.WriterChanged() // before confirming, so no change is missed
		r.reconfirm(ctx)
	}
}

// reconfirm renews every held lease (see renew), retrying promptly while
// there is no writer yet, until it succeeds or no handler is left running
// unfenced.
func (r *Runner) reconfirm(ctx context.Context) {
	bo := newBackOff(10*time.Millisecond, 100*time.Millisecond)
	for {
		jobs := r.held()
		running := false
		for _, j := range jobs {
			if !j.done.Load() && !j.fenced.Load() && !j.lost.Load() {
				running = true
				break
			}
		}
		if !running {
			return
		}
		opCtx, cancel := context.WithTimeout(ctx, r.rtTimeout)
		err := r.renew(opCtx, jobs)
		cancel()
		if err == nil {
			r.stats.reconfirms.Add(1)
			r.log.Info("re-confirmed leases on the new writer", zap.Int("batches", len(jobs)))
			return
		}
		if ctx.Err() != nil {
			return
		}
		r.stats.heartbeatErrors.Add(1)
		d := bo.NextBackOff()
		r.log.Warn("could not re-confirm leases after a writer change; retrying", zap.Error(err), zap.Duration("retry_in", d))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
