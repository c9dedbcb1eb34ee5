package queue

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
)

var (
	// ErrShutdown is the cause of a handler context cancelled because the
	// runner is stopping (StopAndCancel, or a Stop that ran out of time).
	ErrShutdown = errors.New("skiplock: runner shutting down")

	// ErrLeaseNotRenewed is the cause of a handler context cancelled because
	// the batch's lease could not be renewed and is about to expire.
	ErrLeaseNotRenewed = errors.New("skiplock: lease could not be renewed before expiry")
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
	c   *Client
	cfg *RunnerConfig
	log *zap.Logger

	mu       sync.Mutex
	state    runnerState
	inflight map[Ref]*job // claimed and not yet acknowledged; by Ref, as one runner may re-claim a batch
	orphans  map[Ref]bool // re-taken leases whose job had finished: released once it is settled
	orphanN  atomic.Int32 // len(orphans), read without mu by the claim loop

	lostClaims []lostClaim // claims whose answer was lost; claim loop only

	results    chan *job     // handlers report here; capacity Concurrency
	kick       chan struct{} // internal wake-ups (reclaimed leases)
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

	work       chan *job      // claimed jobs for the handler goroutines
	workers    sync.WaitGroup // the Concurrency handler goroutines
	epoch      time.Time      // origin of the runner's monotonic clock
	fenceKick  chan struct{}  // wakes the fence loop when it has no deadline armed
	fenceArmed atomic.Bool

	stats runnerCounters

	completedJournal *journal[Completion] // acknowledged completions, when the DB reports writer changes
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
	b      batch.Batch
	ref    Ref
	cancel context.CancelCauseFunc
	ctx    context.Context
	// fenceAt is when, on the runner's clock (see Runner.clock), the
	// handler's context is cancelled unless a renewal moves it: the lease's
	// expiry as the runner can bound it, minus FenceMargin.
	fenceAt atomic.Int64
	fenced  atomic.Bool // the fence fired
	lost    atomic.Bool // a renewal found the lease gone
	done    atomic.Bool // the handler returned

	err   error // the handler's result
	cause error // why its context was cancelled, if it was
}

type runnerCounters struct {
	claimed, completed, retried, dead, released, leaseLost, panics atomic.Int64
	heartbeatErrors, roundTripErrors, reclaimed                    atomic.Int64
	reasserted, retaken, reconfirms                                atomic.Int64
}

// RunnerStats are counters since the runner started.
type RunnerStats struct {
	Claimed         int64 // batches claimed
	Completed       int64 // completions accepted
	Retried         int64 // failures scheduled for another attempt
	Dead            int64 // failures dead-lettered
	Released        int64 // batches given back (shutdown, lease not renewed)
	LeaseLost       int64 // acknowledgements refused because the lease was lost
	Panics          int64 // handler panics (counted as failures)
	HeartbeatErrors int64 // lease renewals that failed as a whole
	RoundTripErrors int64 // claim/acknowledge round trips that failed (and were retried)
	Reclaimed       int64 // expired leases of the queue made claimable again by this runner
	Reasserted      int64 // completions a new writer had lost, asserted again after a failover
	Retaken         int64 // batches whose claim a new writer had lost, taken again under the same lease
	Reconfirms      int64 // successful re-confirmations of all held leases after a writer change
	Running         int   // handlers running now
	// PendingReassert is how many acknowledged completions a writer change
	// left to be asserted on the current writer and are not yet.
	PendingReassert int
}

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
	log := cfg.Logger
	if log == nil {
		log = c.log
	}
	return &Runner{
		c:          c,
		cfg:        cfg,
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
		work:       make(chan *job, cfg.Concurrency),
		epoch:      time.Now(),
		fenceKick:  make(chan struct{}, 1),
	}, nil
}

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
	r.bg.Add(4)
	go r.heartbeatLoop(bgCtx)
	go r.reconfirmLoop(bgCtx)
	go r.reclaimLoop(bgCtx)
	go r.fenceLoop(bgCtx)
	r.workers.Add(r.cfg.Concurrency)
	for i := 0; i < r.cfg.Concurrency; i++ {
		go r.worker()
	}
	if w, ok := r.c.db.(WriterWatcher); ok && r.c.cfg.JournalWindow > 0 {
		r.completedJournal = newJournal[Completion](r.c.cfg.JournalWindow)
		r.bg.Add(2)
		go func() {
			defer r.bg.Done()
			watchWriter(w, bgCtx.Done(), r.completedJournal.advance)
		}()
		go func() {
			defer r.bg.Done()
			r.completedJournal.assertLoop(bgCtx.Done(), r.assertCompletions, func(err error, pending int) {
				r.log.Warn("could not assert journaled completions on the current writer; retrying",
					zap.Int("pending", pending), zap.Error(err))
			})
		}()
	}
	go r.claimLoop()
	r.state = stateRunning
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
func (r *Runner) Stop(ctx context.Context) error {
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
	// handlers waited for below is complete.
	<-r.claimsDone

	var stopErr error
	allReturned := true
	handlersDone := make(chan struct{})
	go func() {
		r.handlers.Wait()
		close(handlersDone)
	}()
	select {
	case <-handlersDone:
	case <-ctx.Done():
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
	if _, pending := r.completedJournal.counts(); pending == 0 {
		return 0
	}
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), r.rtTimeout)
		defer cancel()
	}
	return r.completedJournal.flush(ctx, r.assertCompletions)
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

// StopAndCancel cancels every running handler's context at once (cause
// ErrShutdown) and then stops as Stop does.
func (r *Runner) StopAndCancel(ctx context.Context) error {
	r.mu.Lock()
	running := r.state == stateRunning
	r.mu.Unlock()
	if running {
		r.cancelAll(ErrShutdown)
	}
	return r.Stop(ctx)
}

// Stopped returns a channel closed once Stop has finished.
func (r *Runner) Stopped() <-chan struct{} { return r.stopped }

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
		HeartbeatErrors: s.heartbeatErrors.Load(),
		RoundTripErrors: s.roundTripErrors.Load(),
		Reclaimed:       s.reclaimed.Load(),
		Reasserted:      s.reasserted.Load(),
		Retaken:         s.retaken.Load(),
		Reconfirms:      s.reconfirms.Load(),
		Running:         r.running(),
		PendingReassert: pendingOf(r.completedJournal),
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

	for {
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
			if canClaim {
				n = min(free, r.cfg.ClaimSize)
			}
			claimed, sent, retry, err := r.roundTrip(pending, n)
			if err != nil {
				r.stats.roundTripErrors.Add(1)
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
			// A new writer: retry at once instead of waiting out the backoff.
			changed = watcher.WriterChanged()
			retryC = nil
			want = true
			bo.Reset()
		case <-stopC:
			stopping = true
			claimsDone()
		case <-r.abandon:
			for done := false; !done; {
				select {
				case j := <-r.results:
					collect(j)
				default:
					done = true
				}
			}
			if len(pending) > 0 {
				// One last attempt, then leave the rest to lease expiry.
				if _, _, _, err := r.roundTrip(pending, 0); err != nil {
					r.log.Error("could not acknowledge outcomes before giving up; their leases will expire",
						zap.Int("batches", len(pending)), zap.Error(err))
				}
			}
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
// more batches, in one pipelined round trip. On error nothing is known to
// have happened and every job stays pending. retry lists jobs whose outcome
// must be sent again.
func (r *Runner) roundTrip(finished []*job, n int) (claimed []batch.Batch, sent time.Time, retry []*job, err error) {
	var completes, releases []*job
	var fails []Failure
	var failJobs []*job
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
		switch {
		case j.err == nil:
			completes = append(completes, j)
		case j.cause != nil:
			releases = append(releases, j)
		default:
			failJobs = append(failJobs, j)
			fails = append(fails, Failure{Ref: j.ref, Err: j.err})
		}
	}

	sql := r.c.sql
	b := &pgx.Batch{}
	if len(completes) > 0 {
		ids, tokens := refArrays(refsOf(completes))
		b.Queue(sql.complete, ids, tokens)
	}
	if len(fails) > 0 {
		args := r.c.failArgs(fails)
		b.Queue(sql.fail, args...)
	}
	if len(releases) > 0 {
		ids, tokens := refArrays(refsOf(releases))
		b.Queue(sql.release, ids, tokens)
	}
	lostTokens := r.lostClaimTokens()
	if len(lostTokens) > 0 {
		b.Queue(sql.releaseTokens, lostTokens)
	}
	orphans := r.settledOrphans()
	if len(orphans) > 0 {
		ids, tokens := refArrays(orphans)
		b.Queue(sql.release, ids, tokens)
	}
	token := newToken()
	epoch, changed := r.completedJournal.epochNow(), r.writerChanged()
	if n > 0 {
		b.Queue(sql.claim, r.cfg.Queue, n, token, r.cfg.Owner, r.cfg.LeaseDuration.Microseconds())
	}

	ctx, cancel := context.WithTimeout(context.Background(), r.rtTimeout)
	defer cancel()
	sent = time.Now()
	br := r.c.db.SendBatch(ctx, b)
	var (
		completed, released map[int64]bool
		failRes             map[int64]bool // id -> dead
	)
	if len(completes) > 0 && err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			completed, err = idSet(rows)
		}
	}
	if len(fails) > 0 && err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			failRes = map[int64]bool{}
			var id int64
			var dead bool
			_, err = pgx.ForEachRow(rows, []any{&id, &dead}, func() error {
				failRes[id] = dead
				return nil
			})
		}
	}
	if len(releases) > 0 && err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			released, err = idSet(rows)
		}
	}
	var freed map[int64]bool
	if len(lostTokens) > 0 && err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			freed, err = idSet(rows)
		}
	}
	var orphansFreed map[int64]bool
	if len(orphans) > 0 && err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			orphansFreed, err = idSet(rows)
		}
	}
	if n > 0 && err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			claimed, err = collectBatches(rows, n, r.cfg.Queue)
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
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
		r.log.Info("released batches of claims whose answer was lost",
			zap.Int("lost_claims", len(lostTokens)), zap.Int("batches", len(freed)), zap.Int("re_taken_orphans", len(orphansFreed)))
	}

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
	r.settle(epoch, closed(changed), completes, completed, failJobs, failRes, releases, released)
	return claimed, sent, retry, nil
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
	var journaled []Completion
	for _, j := range completes {
		if completed[j.ref.ID] {
			r.stats.completed.Add(1)
			journaled = append(journaled, Completion{Ref: j.ref, CreatedAt: j.b.CreatedAt, Queue: j.b.Queue, Key: j.b.IdempotencyKey, Attempt: j.b.Attempt})
		} else {
			lost++
			r.log.Warn("completion refused: lease lost", zap.Int64("batch", j.ref.ID))
		}
	}
	for _, j := range fails {
		dead, ok := failRes[j.ref.ID]
		switch {
		case !ok:
			lost++
			r.log.Warn("failure not recorded: lease lost", zap.Int64("batch", j.ref.ID), zap.Error(j.err))
		case dead:
			r.stats.dead.Add(1)
			r.log.Warn("batch dead-lettered", zap.Int64("batch", j.ref.ID), zap.Int("attempt", j.b.Attempt), zap.Error(j.err))
		default:
			r.stats.retried.Add(1)
			r.log.Debug("batch failed; will retry", zap.Int64("batch", j.ref.ID), zap.Int("attempt", j.b.Attempt), zap.Error(j.err))
		}
	}
	for _, j := range releases {
		if released[j.ref.ID] {
			r.stats.released.Add(1)
		} else {
			lost++
		}
	}
	r.stats.leaseLost.Add(int64(lost))
	r.completedJournal.add(epoch, changed, journaled...)

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
	r.log.Debug("claimed", zap.Int("batches", len(claimed)))
	fenceAt := r.clock(sent.Add(r.cfg.LeaseDuration - r.cfg.FenceMargin))
	jobs := make([]job, len(claimed))
	r.mu.Lock()
	for i := range claimed {
		j := &jobs[i]
		j.b = claimed[i]
		j.ref = RefOf(&j.b)
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
	// fence loop needs a nudge only when it has nothing armed.
	if !r.fenceArmed.Load() {
		wakeUp(r.fenceKick)
	}
}

// clock returns t on the runner's monotonic clock, in nanoseconds.
func (r *Runner) clock(t time.Time) int64 { return int64(t.Sub(r.epoch)) }

// worker runs handlers until the runner stops.
func (r *Runner) worker() {
	defer r.workers.Done()
	for j := range r.work {
		r.run(j)
	}
}

// run calls the handler and reports the job. A panic becomes the job's error.
func (r *Runner) run(j *job) {
	defer r.handlers.Done()
	defer func() {
		if p := recover(); p != nil {
			r.stats.panics.Add(1)
			j.err = fmt.Errorf("handler panic: %v\n%s", p, debug.Stack())
			r.log.Error("handler panicked", zap.Int64("batch", j.ref.ID), zap.Any("panic", p))
		}
		if j.err != nil && j.ctx.Err() != nil {
			j.cause = context.Cause(j.ctx)
		}
		j.cancel(nil)
		j.done.Store(true)
		r.results <- j
	}()
	j.err = r.cfg.Handler(j.ctx, &j.b)
}

// fenceLoop cancels the context of every handler whose lease could not be
// renewed in time: FenceMargin before the lease's expiry as the runner can
// bound it. It sleeps until the earliest fence of any running handler;
// renewals only move fences later, so a wake-up that finds nothing due just
// sleeps again.
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
		r.mu.Lock()
		for _, j := range r.inflight {
			if j.done.Load() || j.fenced.Load() {
				continue
			}
			if at := j.fenceAt.Load(); at <= now {
				j.fenced.Store(true)
				j.cancel(ErrLeaseNotRenewed)
				r.log.Warn("lease not renewed in time; cancelling handler", zap.Int64("batch", j.ref.ID))
			} else if at < next {
				next = at
			}
		}
		armed := next != math.MaxInt64
		r.fenceArmed.Store(armed)
		r.mu.Unlock()
		if armed {
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
	for _, j := range jobs {
		switch {
		case kept[j.ref]:
			j.fenceAt.Store(fenceAt)
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

// writerChanged returns the channel closed at the next writer change, or
// nil without a completion journal.
func (r *Runner) writerChanged() <-chan struct{} {
	if r.completedJournal == nil {
		return nil
	}
	return r.c.db.(WriterWatcher).WriterChanged()
}

// assertCompletions asserts journaled completions on the current writer.
func (r *Runner) assertCompletions(ctx context.Context, cs []Completion) error {
	n, err := r.c.ReassertCompleted(ctx, cs)
	if err != nil {
		return err
	}
	r.stats.reasserted.Add(int64(n))
	lvl := zap.DebugLevel
	if n > 0 {
		lvl = zap.WarnLevel
	}
	r.log.Log(lvl, "asserted journaled completions on the current writer", zap.Int("journaled", len(cs)), zap.Int("restored", n))
	return nil
}

// reclaimLoop makes expired leases of the queue claimable again, vacuums
// the hot table, and prunes old completion records and keys now and then.
func (r *Runner) reclaimLoop(ctx context.Context) {
	defer r.bg.Done()
	t := time.NewTicker(r.cfg.ReclaimInterval)
	defer t.Stop()
	var pruneC, vacuumC <-chan time.Time
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
		case <-t.C:
			avail, dead, err := r.c.ReclaimExpired(ctx, r.cfg.Queue)
			if err != nil {
				if ctx.Err() == nil {
					r.log.Warn("reclaim of expired leases failed", zap.Error(err))
				}
				continue
			}
			if avail+dead > 0 {
				r.stats.reclaimed.Add(int64(avail + dead))
				r.log.Info("reclaimed expired leases", zap.Int("available", avail), zap.Int("dead", dead))
				wakeUp(r.kick)
			}
		case <-vacuumC:
			t0 := time.Now()
			ran, err := r.c.Vacuum(ctx, r.cfg.VacuumInterval)
			switch {
			case errors.Is(err, ErrVacuumNotPermitted):
				r.log.Warn("cannot vacuum the batch table; leaving it to autovacuum", zap.Error(err))
				vacuumC = nil
			case err != nil:
				if ctx.Err() == nil {
					r.log.Warn("vacuum failed", zap.Error(err))
				}
			case ran:
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
