package queue

import (
	"context"
	"fmt"
	"math"
	"runtime/debug"
	"time"

	"go.uber.org/zap"

	"github.com/skiplock/skiplock/batch"
)

// Handler execution. Every way a handler can end — return, panic,
// runtime.Goexit, a hang past its timeout — is turned into one report on
// Runner.results, made on the handler's own goroutine (or by the fence loop
// for an abandoned handler), never in the claim loop: nothing a handler
// returns runs in the claim loop except plain data (job.text).

// worker runs handlers until the runner stops. A worker whose handler was
// abandoned or called runtime.Goexit has handed its slot, and its count in
// Runner.workers, to a replacement, so it ends without Done.
func (r *Runner) worker() {
	for j := range r.work {
		if !r.run(j) {
			return
		}
	}
	r.workers.Done()
}

// replaceWorker starts a worker in the slot of one that is gone or stuck;
// the old one's count in Runner.workers moves to it.
func (r *Runner) replaceWorker() { go r.worker() }

// handlerPanic is the error of a handler that panicked.
type handlerPanic struct {
	value any
	stack []byte
}

func (e *handlerPanic) Error() string {
	return fmt.Sprintf("handler panic: %s\n%s", panicText(e.value), e.stack)
}

// run calls the handler and reports the job. It returns false when this
// goroutine must stop being a worker: the job was abandoned meanwhile (a
// replacement took the slot). A handler that calls runtime.Goexit ends
// this goroutine inside run; the deferred report starts a replacement.
func (r *Runner) run(j *job) (keep bool) {
	var err error
	returned := false
	defer func() {
		p := recover()
		switch {
		case p != nil:
			r.stats.panics.Add(1)
			err = &handlerPanic{value: p, stack: debug.Stack()}
		case !returned:
			r.stats.goexits.Add(1)
			err = ErrHandlerGoexit
		}
		keep = r.report(j, err, false)
		if !keep {
			r.stats.stuck.Add(-1)
			r.log.Warn("abandoned handler returned; its result is ignored", zap.Int64("batch", j.ref.ID))
		}
		if !returned && p == nil && keep {
			// runtime.Goexit goes on ending this goroutine after the
			// deferred calls: keep the slot with a new worker.
			r.log.Error("handler called runtime.Goexit; failing its attempt and replacing the worker", zap.Int64("batch", j.ref.ID))
			r.replaceWorker()
		}
	}()
	if j.finished {
		// Completed on an earlier writer; the completion is acknowledged
		// again under this claim (see finishedBefore).
		returned = true
		return true
	}
	if d := r.handlerTimeout(&j.b); d > 0 {
		at := r.clock(time.Now().Add(d))
		j.timeout.Store(int64(d))
		j.timeoutAt.Store(at)
		if at < r.fenceNext.Load() {
			wakeUp(r.fenceKick)
		}
	}
	err = r.handler(j.ctx, &j.b)
	returned = true
	return true
}

// handlerTimeout is the timeout of b's handler, 0 for none.
func (r *Runner) handlerTimeout(b *batch.Batch) time.Duration {
	if r.cfg.HandlerTimeoutFunc != nil {
		if d := r.cfg.HandlerTimeoutFunc(b); d != 0 {
			return max(d, 0)
		}
	}
	return max(r.cfg.HandlerTimeout, 0)
}

// report makes j's one report to the claim loop, with err as the handler's
// result; abandoned says the fence loop gave up on the handler. It returns
// false if j had been reported already (the handler returned after it was
// abandoned: its result is dropped).
func (r *Runner) report(j *job, err error, abandoned bool) bool {
	if !j.reported.CompareAndSwap(false, true) {
		return false
	}
	j.err = err
	if err != nil && j.ctx.Err() != nil {
		j.cause = context.Cause(j.ctx)
	}
	j.result = j.outcome()
	if j.result == outcomeFail {
		// Computed here, not in the claim loop: err's methods may panic,
		// block or return megabytes (see describeError).
		j.text, j.permanent = describeError(err)
		switch {
		case abandoned:
			j.text = batch.TruncateError(fmt.Sprintf("%s (handler timeout %s, grace %s)", j.text, time.Duration(j.timeout.Load()), r.cfg.HandlerGrace))
		case j.cause == ErrHandlerTimeout:
			j.text = batch.TruncateError(fmt.Sprintf("%v after %s: %s", ErrHandlerTimeout, time.Duration(j.timeout.Load()), j.text))
		}
		if _, ok := err.(*handlerPanic); ok {
			r.log.Error("handler panicked", zap.Int64("batch", j.ref.ID), zap.String("error", j.text))
		}
	}
	j.cancel(nil)
	j.done.Store(true)
	r.handlers.Done()
	r.results <- j // never blocks: at most Concurrency jobs are out, each reported once
	return true
}

// handlerDeadline keeps j's handler deadlines at now on the runner's clock
// (fence loop, under Runner.mu): it cancels the context with
// ErrHandlerTimeout once the timeout is due, and reports give once the
// handler has not returned HandlerGrace after the runner cancelled its
// context. Otherwise next is j's next deadline (MaxInt64 for none).
func (r *Runner) handlerDeadline(j *job, now int64) (next int64, give bool) {
	next = math.MaxInt64
	if at := j.timeoutAt.Load(); at != 0 && !j.timedOut.Load() {
		if at <= now {
			j.timedOut.Store(true)
			r.stats.timedOut.Add(1)
			j.cancel(ErrHandlerTimeout)
			j.cancelledAt.CompareAndSwap(0, max(now, 1))
			r.log.Warn("handler timed out; cancelling it", zap.Int64("batch", j.ref.ID), zap.Duration("timeout", time.Duration(j.timeout.Load())))
		} else {
			next = at
		}
	}
	if c := j.cancelledAt.Load(); c != 0 {
		at := c + int64(r.cfg.HandlerGrace)
		if at <= now {
			return 0, true
		}
		next = min(next, at)
	}
	return next, false
}

// abandonHandlers gives up on the handlers of jobs, which did not return within
// HandlerGrace after the runner cancelled their contexts: each is
// reported (failed if its timeout fired, else released) and its slot goes
// to a new worker.
func (r *Runner) abandonHandlers(jobs []*job) {
	for _, j := range jobs {
		r.stats.stuck.Add(1) // before the report, which the handler may see at once
		if !r.report(j, ErrHandlerAbandoned, true) {
			r.stats.stuck.Add(-1) // it returned just now
			continue
		}
		r.stats.abandoned.Add(1)
		r.log.Error("handler did not return after its context was cancelled; abandoned it and replaced its worker",
			zap.Int64("batch", j.ref.ID), zap.Duration("grace", r.cfg.HandlerGrace), zap.String("outcome", j.text))
		r.replaceWorker()
	}
}
