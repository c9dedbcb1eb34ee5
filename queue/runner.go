package queue

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/skiplock/skiplock/batch"
)

var (
	// ErrShutdown is the cause of a handler context cancelled because the
	// runner is stopping (StopAndCancel, or a Stop that ran out of time).
	ErrShutdown = errors.New("skiplock: runner shutting down")

	// ErrLeaseNotRenewed is the cause of a handler context cancelled because
	// the batch's lease could not be renewed and is about to expire.
	ErrLeaseNotRenewed = errors.New("skiplock: lease could not be renewed before expiry")

	// ErrHandlerTimeout is the cause of a handler context cancelled because
	// the handler ran longer than its timeout (RunnerConfig.HandlerTimeout
	// or HandlerTimeoutFunc). Unlike the other causes, a handler that returns
	// an error after it fails the attempt (it is not released), so a batch
	// whose handler always hangs is dead-lettered after MaxAttempts.
	ErrHandlerTimeout = errors.New("skiplock: handler timeout")

	// ErrHandlerGoexit is recorded (as the attempt's last error) for a
	// handler that ended its goroutine without returning or panicking:
	// runtime.Goexit, as t.FailNow and require.* call. The attempt fails.
	ErrHandlerGoexit = errors.New("skiplock: handler exited its goroutine without returning (runtime.Goexit, e.g. t.FailNow)")

	// ErrHandlerAbandoned is recorded for a handler that did not return
	// within HandlerGrace after the runner cancelled its context (timeout,
	// lease not renewed or lost): the runner stops waiting for it, fails
	// the attempt (released instead if the cause was not the timeout) and
	// runs a new worker in its slot. The handler's goroutine is left to end
	// on its own; its result is ignored.
	ErrHandlerAbandoned = errors.New("skiplock: handler abandoned: it did not return within HandlerGrace after its context was cancelled")
)

// Runner claims batches of one queue and runs a handler on each, with
// leases renewed while handlers run. Create it with NewRunner, then Start,
// and Stop it before exit. It is safe for concurrent use.
//
// After a failover to a replica that missed recent commits, the new writer
// may lack a claim or a lease extension of this runner, and another runner
// may claim such a batch at once. When the DB reports writer changes
// (WriterWatcher, e.g. a failover.Pool), the runner re-confirms every held
// lease on the new writer as soon as it is reachable, in one statement:
// leases still held are extended, batches the writer has available with no
// lease are taken again under the same token, and every other handler is
// cancelled (cause ErrLeaseLost). Residual window: two handlers of one batch
// can overlap from another runner's claim on the new writer until this
// re-confirmation completes — the time the failover pool takes to notice the
// change and reach the new writer, plus one round trip. Measured on the
// 2-core reference machine from the change signal to the cancellation
// (TestRunnerReconfirmsOnWriterChange, 4 runs × 8 rounds): median 2–4 ms,
// max 16 ms; from the endpoint switch on a real primary/replica pair
// through a failover.Pool (TestRunnerReconfirmAfterFailover, 4 runs):
// 29–91 ms to the cancellation, 29–109 ms to the re-take. A
// handler must still honour its context; the runner's own claim loop may
// also claim such a batch again before the re-take, which cancels the old
// handler the same way. Without WriterWatcher, the next heartbeat does the
// same re-confirmation.
type Runner struct {
	c       *Client
	cfg     *RunnerConfig
	log     *zap.Logger
	handler HandlerFunc // cfg.Handler wrapped by cfg.Middleware
	events  *eventSink  // the client's; nil without Config.OnEvent

	mu       sync.Mutex
	state    runnerState
	inflight map[Ref]*job // claimed and not yet acknowledged; by Ref, as one runner may re-claim a batch
	orphans  map[Ref]bool // re-taken leases whose job had finished: released once it is settled
	orphanN  atomic.Int32 // len(orphans), read without mu by the claim loop

	lostClaims []lostClaim // claims whose answer was lost; claim loop only

	results chan *job     // handlers report here; capacity Concurrency
	kick    chan struct{} // internal wake-ups (reclaimed leases)
	// cursor is the claim floor (claim loop only; its pace is the client's
	// for the queue, shared with the client's other runners of it);
	// sweepAsked starts the next pass of the sweep below the floor as
	// soon as one may run (set by the reclaim loop).
	cursor     claimCursor
	sweepAsked atomic.Bool
	pace       *claimPace // the client's, for the queue: the sweep below the floors, floor lag, reclaims
	// troubleAt is when the runner last failed to reach a writer or saw the
	// writer change (Unix nanoseconds): reclaims hold off for reclaimHold
	// after it (see reclaimLoop).
	troubleAt  atomic.Int64
	stopClaims chan struct{} // closed when Stop begins
	claimsDone chan struct{} // closed by the claim loop once it will dispatch no more batches
	abandon    chan struct{} // closed when Stop gives up waiting
	loopDone   chan struct{} // closed when the claim loop exits
	stopped    chan struct{} // closed when Stop has finished

	cancelledAll bool // set by cancelAll, under mu
	bgCancel     context.CancelFunc
	bg           sync.WaitGroup // heartbeat and reclaim loops
	handlers     sync.WaitGroup

	wake        <-chan struct{}
	unsubscribe func()
	rtTimeout   time.Duration

	work      chan *job      // claimed jobs for the handler goroutines
	workers   sync.WaitGroup // the Concurrency handler goroutines
	epoch     time.Time      // origin of the runner's monotonic clock
	fenceKick chan struct{}  // wakes the fence loop when a deadline earlier than fenceNext appears
	fenceNext atomic.Int64   // the fence loop's next wake-up on the runner's clock; MaxInt64 when none

	stats runnerCounters

	claimEpoch int64 // the journal epoch of the last claim sent (claim loop only)
}

type runnerState int

const (
	stateNew runnerState = iota
	stateRunning
	stateStopping
	stateStopped
)

// job is one claimed batch while its handler runs and until its outcome is
// acknowledged to the database.
type job struct {
	b     batch.Batch
	ref   Ref
	epoch int64 // the client's journal epoch when the claim was sent (see Runner.settle)
	// finished: the batch was completed on an earlier writer, and its
	// handler is not run again (see finishedBefore).
	finished bool
	cancel   context.CancelCauseFunc
	ctx      context.Context
	// fenceAt is when, on the runner's clock (see Runner.clock), the
	// handler's context is cancelled unless a renewal moves it: the lease's
	// expiry as the runner can bound it, minus FenceMargin.
	fenceAt atomic.Int64
	fenced  atomic.Bool // the fence fired
	lost    atomic.Bool // a renewal found the lease gone
	done    atomic.Bool // the handler returned, or was abandoned

	// timeoutAt is when, on the runner's clock, the handler's context is
	// cancelled with ErrHandlerTimeout; 0 for no timeout.
	timeoutAt atomic.Int64
	timeout   atomic.Int64 // the handler's timeout, a time.Duration
	timedOut  atomic.Bool  // the timeout fired
	// cancelledAt is when, on the runner's clock, the runner first
	// cancelled the handler's context for a reason other than shutdown
	// (timeout, fence, lease lost); 0 before. HandlerGrace after it the
	// handler is abandoned.
	cancelledAt atomic.Int64
	// reported is set by whichever reports the job first: the handler's
	// goroutine as it returns, or the fence loop abandoning it.
	reported atomic.Bool

	// Set by the reporter, read by the claim loop after it received the
	// job from Runner.results.
	err       error  // the handler's result
	cause     error  // why its context was cancelled, if it was
	text      string // the stored text of err, for a failure (see describeError)
	permanent bool   // err is Permanent
	result    jobOutcome
}

// jobOutcome is how a finished job is acknowledged.
type jobOutcome int

const (
	outcomeComplete jobOutcome = iota
	outcomeFail
	outcomeRelease
)

// outcome decides how a finished job is acknowledged, once, as it is
// reported (job.result): a nil error completes; an error after the runner
// cancelled the context releases the batch (its attempt is given back),
// unless the handler had exceeded its timeout by then, whatever the
// cancellation's cause (a handler past its timeout that is cancelled at
// shutdown still fails, so a hanging batch dead-letters across restarts);
// any other error fails it.
func (j *job) outcome() jobOutcome {
	switch {
	case j.err == nil:
		return outcomeComplete
	case j.cause != nil && j.cause != ErrHandlerTimeout && !j.timedOut.Load():
		return outcomeRelease
	}
	return outcomeFail
}

type runnerCounters struct {
	claimed, completed, retried, dead, released, leaseLost, panics              atomic.Int64
	heartbeatErrors, roundTripErrors, reclaimed                                 atomic.Int64
	retaken, reconfirms, fullClaims, flooredClaims, sliceClaims, finishedBefore atomic.Int64
	goexits, timedOut, abandoned, stuck                                         atomic.Int64
}

// RunnerStats are counters since the runner started.
type RunnerStats struct {
	Claimed   int64 // batches claimed
	Completed int64 // completions accepted
	Retried   int64 // failures scheduled for another attempt
	Dead      int64 // failures dead-lettered
	Released  int64 // batches given back (shutdown, lease not renewed)
	LeaseLost int64 // acknowledgements refused because the lease was lost
	Panics    int64 // handler panics (counted as failures)
	Goexits   int64 // handlers that called runtime.Goexit (counted as failures; the worker was replaced)
	TimedOut  int64 // handler contexts cancelled with ErrHandlerTimeout
	// Abandoned counts handlers the runner stopped waiting for
	// (ErrHandlerAbandoned): each one's slot was lost to it and given to a
	// new worker, so the runner keeps Concurrency workers.
	Abandoned int64
	// Stuck is how many abandoned handlers have not returned yet: goroutines
	// the runner no longer counts as workers.
	Stuck           int
	HeartbeatErrors int64 // lease renewals that failed as a whole
	RoundTripErrors int64 // claim/acknowledge round trips that failed (and were retried)
	Reclaimed       int64 // expired leases of the queue made claimable again by this runner
	Reasserted      int64 // completions a new writer had lost, asserted again after a failover: the client's figure, shared by all its runners
	Retaken         int64 // batches whose claim a new writer had lost, taken again under the same lease
	Reconfirms      int64 // successful re-confirmations of all held leases after a writer change
	// FullClaims, FlooredClaims and SliceClaims count claims that read the
	// claim index from its head (at start), from the runner's claim floor,
	// and a slice of the sweep below the floor (see "Old snapshots" in the
	// package documentation).
	FullClaims    int64
	FlooredClaims int64
	SliceClaims   int64
	// FinishedBefore counts claimed batches that the client had completed
	// on an earlier writer, which lost the completion: they were completed
	// again without running their handler.
	FinishedBefore int64
	Running        int // handlers running now
	Slots          int // RunnerConfig.Concurrency: the most handlers that run at once
	// PendingReassert is how many acknowledged completions a writer change
	// left to be asserted on the current writer and are not yet.
	PendingReassert int
}

// Queue returns the name of the queue the runner works.
func (r *Runner) Queue() string { return r.cfg.Queue }

// NewRunner returns a Runner for c. It checks cfg and returns an
// *ArgumentError naming the field for a bad one; it does not touch the
// database.
func NewRunner(c *Client, cfg *RunnerConfig) (*Runner, error) {
	if c == nil {
		return nil, argError("runner config", "client", "nil")
	}
	if err := c.check("new runner"); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	handler, err := chainHandler(cfg.Handler, cfg.Middleware)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = c.log
	}
	r := &Runner{
		c:          c,
		cfg:        cfg,
		handler:    handler,
		events:     c.events,
		log:        log.Named("runner").With(zap.String("queue", cfg.Queue)),
		inflight:   map[Ref]*job{},
		orphans:    map[Ref]bool{},
		results:    make(chan *job, cfg.Concurrency),
		kick:       make(chan struct{}, 1),
		stopClaims: make(chan struct{}),
		claimsDone: make(chan struct{}),
		abandon:    make(chan struct{}),
		loopDone:   make(chan struct{}),
		stopped:    make(chan struct{}),
		rtTimeout:  min(c.cfg.OpTimeout, max(cfg.LeaseDuration/3, time.Second)),
		pace:       c.claimPace(cfg.Queue),
		work:       make(chan *job, cfg.Concurrency),
		epoch:      time.Now(),
		fenceKick:  make(chan struct{}, 1),
	}
	r.cursor.pace = r.pace
	r.fenceNext.Store(math.MaxInt64)
	return r, nil
}

// Stats returns the runner's counters.
func (r *Runner) Stats() RunnerStats {
	s := &r.stats
	return RunnerStats{
		Claimed:         s.claimed.Load(),
		Completed:       s.completed.Load(),
		Retried:         s.retried.Load(),
		Dead:            s.dead.Load(),
		Released:        s.released.Load(),
		LeaseLost:       s.leaseLost.Load(),
		Panics:          s.panics.Load(),
		Goexits:         s.goexits.Load(),
		TimedOut:        s.timedOut.Load(),
		Abandoned:       s.abandoned.Load(),
		Stuck:           int(s.stuck.Load()),
		HeartbeatErrors: s.heartbeatErrors.Load(),
		RoundTripErrors: s.roundTripErrors.Load(),
		Reclaimed:       s.reclaimed.Load(),
		Retaken:         s.retaken.Load(),
		Reconfirms:      s.reconfirms.Load(),
		FullClaims:      s.fullClaims.Load(),
		SliceClaims:     s.sliceClaims.Load(),
		FinishedBefore:  s.finishedBefore.Load(),
		FlooredClaims:   s.flooredClaims.Load(),
		Running:         r.running(),
		Slots:           r.cfg.Concurrency,
		PendingReassert: pendingOf(r.c.done),
		Reasserted:      r.c.reassertedDone.Load(),
	}
}

func pendingOf[T any](j *journal[T]) int {
	_, pending := j.counts()
	return pending
}

func (r *Runner) running() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, j := range r.inflight {
		if !j.done.Load() {
			n++
		}
	}
	return n
}

func (r *Runner) unacknowledged() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.inflight)
}
