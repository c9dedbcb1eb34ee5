package faultlab

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/pgtest"
)

// ChaosConfig configures RunChaos.
type ChaosConfig struct {
	Seed     int64
	Duration time.Duration
	// Kinds drawn from. Defaults to AllKinds.
	Kinds []Kind
	// Load configures the load. Defaults to nil (LoadConfig defaults).
	Load *LoadConfig
	// Pool edits the endpoint's failover pool configuration. Defaults to none.
	Pool func(*failover.Config)
	// Logf receives the schedule and progress. Defaults to none.
	Logf func(format string, args ...any)
}

// ChaosResult is what a randomized run found.
type ChaosResult struct {
	Schedule *Schedule
	Outcomes []*Outcome
	Checks   []*Report // one per quiet period, then the final one
	Final    *Report

	Faults       map[Kind]int // faults run, by kind
	FaultErrors  map[Kind]int // faults that failed to run (overlap faults only; a topology error ends the run)
	Lost         int          // the largest count of lost batches over all checks
	Stale        int          // the largest count of stale completions over all checks
	DoneTwice    int
	Overlaps     int
	Duplicates   map[Kind]int // duplicates attributed to the fault in progress ("" none)
	DupLosing    int          // duplicates attributed to faults that lose commits
	DupNotLosing int          // ...to other faults or none
	// Delivered twice (both runs did all their work), attributed the same way.
	TwiceLosing, TwiceNotLosing int
	FaultsLosing                int // faults of kinds that lose commits
	SlowDetection               int // faults whose endpoint moved 30 s or more after the fault
	// AckedAroundLosing counts the batches acknowledged around faults that lose commits
	// (from AroundLosing before such a fault began to AroundLosing after it ended): the
	// batches such a fault puts at risk, against which DupLosing is judged.
	AckedAroundLosing int
	CommitsLost       int // acknowledged enqueues the new writers lacked at promotion (proof of real loss)
	RealCommitLosses  int // faults whose new writer lacked acknowledged enqueues

	Recoveries []time.Duration
	// SlowedRecoveries are recoveries during which a latency fault (100 ms each way) was
	// under way: every round trip, connection set-up included, is then slow by design. They
	// are reported apart and left out of the percentiles.
	SlowedRecoveries []time.Duration
	// InterruptedRecoveries are recoveries cut short by another fault that blocks traffic (a
	// topology fault, a blackhole) beginning before the first handler start: the writer did
	// not stay reachable, so they measure nothing of their own (the interrupting fault's
	// recovery is measured). They are counted, not timed, and never count as timeouts.
	InterruptedRecoveries int
	RecoveryTimeouts      int
	RecoveryP50           time.Duration
	RecoveryP99           time.Duration
	RecoveryMax           time.Duration
}

// Broken reports a broken invariant: lost batches, stale completions, double completions.
func (r *ChaosResult) Broken() bool { return r.Lost > 0 || r.Stale > 0 || r.DoneTwice > 0 }

// String summarizes the result.
func (r *ChaosResult) String() string {
	return fmt.Sprintf("seed=%d faults=%v fault_errors=%v lost=%d stale_completions=%d done_twice=%d slow_detection=%d duplicates=%v (losing faults %d: %d of %d acknowledged around them, others: %d; delivered twice: %d / %d) overlaps=%d commits_lost=%d (in %d faults) recovery p50=%s p99=%s max=%s (%d samples; %d more under latency, %d interrupted) timeouts=%d",
		r.Schedule.Seed, r.Faults, r.FaultErrors, r.Lost, r.Stale, r.DoneTwice, r.SlowDetection, r.Duplicates, r.FaultsLosing, r.DupLosing, r.AckedAroundLosing, r.DupNotLosing, r.TwiceLosing, r.TwiceNotLosing,
		r.Overlaps, r.CommitsLost, r.RealCommitLosses, r.RecoveryP50.Round(time.Millisecond), r.RecoveryP99.Round(time.Millisecond), r.RecoveryMax.Round(time.Millisecond),
		len(r.Recoveries), len(r.SlowedRecoveries), r.InterruptedRecoveries, r.RecoveryTimeouts)
}

// RunChaos starts a cluster (with a password role when credential rotation is among the
// kinds), a failover pool on the endpoint and the load, runs the schedule of cfg.Seed over
// cfg.Duration, checks the invariants after every quiet period and at the end, and returns
// the result. It returns an error when the run itself failed (a topology fault could not be
// injected, a check could not run); a broken invariant is in the result.
func RunChaos(ctx context.Context, cfg *ChaosConfig) (*ChaosResult, error) {
	return RunSchedule(ctx, NewSchedule(cfg.Seed, cfg.Duration, cfg.Kinds), cfg)
}

// RunSchedule is RunChaos with a given schedule (cfg's Seed, Duration and Kinds unused).
func RunSchedule(ctx context.Context, sched *Schedule, cfg *ChaosConfig) (*ChaosResult, error) {
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	logf("%s", sched)
	rotate := slices.ContainsFunc(sched.Faults, func(f Fault) bool { return f.Kind == CredentialRotation })
	var opts *pgtest.Options
	if rotate {
		opts = &pgtest.Options{PasswordRoles: []string{RoleDefault}}
	}
	c, err := StartCluster(ctx, &ClusterConfig{Options: opts, Logf: logf})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if rotate {
		if err := c.EnableCredentials(ctx, RoleDefault); err != nil {
			return nil, err
		}
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute) // setup: fail fast, not at ctx's end
	defer cancel()
	pool, err := c.NewPool(sctx, cfg.Pool)
	if err != nil {
		return nil, err
	}
	l, err := StartLoad(sctx, pool, cfg.Load)
	if err != nil {
		return nil, err
	}
	defer l.Stop()
	return Chaos(ctx, c, l, sched, logf)
}

// Chaos runs sched on a running cluster and load (see RunChaos) and finishes the load.
func Chaos(ctx context.Context, c *Cluster, l *Load, sched *Schedule, logf func(string, ...any)) (*ChaosResult, error) {
	res := &ChaosResult{Schedule: sched, Faults: map[Kind]int{}, FaultErrors: map[Kind]int{}, Duplicates: map[Kind]int{}}
	start := time.Now()
	var (
		mu    sync.Mutex
		quiet sync.RWMutex // overlap faults hold it shared; a quiet period exclusively
		wg    sync.WaitGroup
	)
	add := func(o *Outcome) {
		mu.Lock()
		defer mu.Unlock()
		res.Outcomes = append(res.Outcomes, o)
		res.Faults[o.Fault.Kind]++
		if o.Err != nil {
			res.FaultErrors[o.Fault.Kind]++
		}
		res.CommitsLost += o.CommitsLost
		logf("faultlab: %s done in %s: err=%v recoveries=%s commits_lost=%d", o.Fault, o.Restored.Sub(o.Began).Round(time.Millisecond), o.Err, fmtRecoveries(o.Recoveries), o.CommitsLost)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The overlap lane: each fault in its own goroutine at its time.
	for _, f := range sched.Faults {
		if f.Kind.Topology() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if pause(rctx, time.Until(start.Add(f.Start))) != nil {
				return
			}
			quiet.RLock()
			defer quiet.RUnlock()
			if rctx.Err() != nil {
				return
			}
			add(Run(rctx, c, l, f))
		}()
	}
	// The topology lane, with the quiet periods, in this goroutine.
	var runErr error
	fi, qi := 0, 0
	for runErr == nil && ctx.Err() == nil {
		for fi < len(sched.Faults) && !sched.Faults[fi].Kind.Topology() {
			fi++
		}
		if fi == len(sched.Faults) && qi == len(sched.Quiet) {
			break
		}
		if qi < len(sched.Quiet) && (fi == len(sched.Faults) || sched.Quiet[qi] <= sched.Faults[fi].Start) {
			_ = pause(ctx, time.Until(start.Add(sched.Quiet[qi])))
			quiet.Lock()
			logf("faultlab: quiet period %d", qi+1)
			_ = pause(ctx, QuietPeriod)
			rep, err := l.Check(ctx, c.Direct(c.Writer()), time.Now().Add(-QuietPeriod/2))
			quiet.Unlock()
			if err != nil {
				runErr = err
				break
			}
			logf("faultlab: check after quiet period %d: %s %s", qi+1, rep, rep.LostDetail())
			res.Checks = append(res.Checks, rep)
			qi++
			continue
		}
		f := sched.Faults[fi]
		fi++
		_ = pause(ctx, time.Until(start.Add(f.Start)))
		o := Run(ctx, c, l, f)
		add(o)
		if o.Err != nil {
			runErr = o.Err
		}
	}
	if rest := time.Until(start.Add(sched.Duration)); runErr == nil && rest > 0 {
		_ = pause(ctx, rest)
	}
	cancel()
	wg.Wait()
	if runErr != nil {
		return res, fmt.Errorf("faultlab: chaos seed %d: %w", sched.Seed, runErr)
	}
	final, err := l.Finish(ctx, c.Direct(c.Writer()), 2*time.Minute)
	if err != nil {
		return res, err
	}
	logf("faultlab: final check: %s %s", final, final.LostDetail())
	res.Final = final
	res.Checks = append(res.Checks, final)
	res.summarize(l.Config().Lease, l.AckTimes())
	return res, nil
}

// AroundLosing is how far before and after a fault that loses commits a batch's
// acknowledgement counts as "around" it (ChaosResult.AckedAroundLosing).
const AroundLosing = 10 * time.Second

// summarize fills in the totals, attributes duplicates and computes recovery percentiles.
func (r *ChaosResult) summarize(lease time.Duration, acks []time.Time) {
	for _, at := range acks {
		for _, o := range r.Outcomes {
			if o.Fault.Kind.LosesCommits() && !at.Before(o.Began.Add(-AroundLosing)) && at.Before(o.Restored.Add(AroundLosing)) {
				r.AckedAroundLosing++
				break
			}
		}
	}
	for _, rep := range r.Checks {
		r.Lost = max(r.Lost, rep.Lost)
		r.Stale = max(r.Stale, rep.StaleCompletions)
		r.DoneTwice = max(r.DoneTwice, rep.DoneTwice)
	}
	r.Overlaps = r.Final.Overlaps
	for _, o := range r.Outcomes {
		if o.Fault.Kind.LosesCommits() {
			r.FaultsLosing++
		}
		if o.LostCommits() {
			r.RealCommitLosses++
		}
		if (o.Fault.Kind == CommitLoss || o.Fault.Kind == StaleEndpoint) && o.Fault.Window >= 30*time.Second {
			r.SlowDetection++
		}
		for _, rec := range o.Recoveries {
			d, own := r.ownRecovery(o, rec)
			if !own || r.interrupted(o, rec) {
				r.InterruptedRecoveries++
				continue
			}
			if rec.Err != nil {
				r.RecoveryTimeouts++
			}
			if rec.Slowed || r.slowed(o, rec, d) {
				r.SlowedRecoveries = append(r.SlowedRecoveries, d)
				continue
			}
			r.Recoveries = append(r.Recoveries, d)
		}
	}
	tail := lease + 2*time.Second // a duplicate shows up at most a lease after its fault
	for _, at := range r.Final.DeliveredTwiceAt {
		if by := r.faultAt(at, tail); by != nil && by.Fault.Kind.LosesCommits() {
			r.TwiceLosing++
		} else {
			r.TwiceNotLosing++
		}
	}
	for _, at := range r.Final.DuplicateAt {
		by := r.faultAt(at, tail)
		var k Kind
		if by != nil {
			k = by.Fault.Kind
		}
		r.Duplicates[k]++
		if k.LosesCommits() {
			r.DupLosing++
		} else {
			r.DupNotLosing++
		}
	}
	r.RecoveryP50 = Percentile(r.Recoveries, 50)
	r.RecoveryP99 = Percentile(r.Recoveries, 99)
	r.RecoveryMax = Percentile(r.Recoveries, 100)
}

// faultAt returns the fault a duplicate seen at `at` is attributed to: among the faults
// under way then (or ended less than tail before), the latest one that loses commits if
// there is one, else the latest one; nil if none. Faults overlap, and a latency fault or a
// password rotation that begins while a commit loss is being recovered from does not run
// batches twice; the commit loss does (a 10-minute run with every duplicate printed,
// SKIPLOCK_DEBUG_DUP, had all its duplicates within a commit-losing fault's window or held
// by a SIGKILLed worker).
func (r *ChaosResult) faultAt(at time.Time, tail time.Duration) *Outcome {
	var by, losing *Outcome
	for _, o := range r.Outcomes {
		if at.Before(o.Began) || !at.Before(o.Restored.Add(tail)) {
			continue
		}
		if by == nil || o.Began.After(by.Began) {
			by = o
		}
		if o.Fault.Kind.LosesCommits() && (losing == nil || o.Began.After(losing.Began)) {
			losing = o
		}
	}
	if losing != nil {
		return losing
	}
	return by
}

// slowed reports whether a latency fault other than o overlapped rec's recovery, which took d.
func (r *ChaosResult) slowed(o *Outcome, rec Recovery, d time.Duration) bool {
	from := rec.Reachable.Add(rec.Took - d)
	to := rec.Reachable.Add(rec.Took)
	for _, o2 := range r.Outcomes {
		if o2 != o && o2.Fault.Kind == Latency && o2.Began.Before(to) && from.Before(o2.Ended) {
			return true
		}
	}
	return false
}

// blocks reports whether a fault of kind k stops traffic to a writer while it is under way.
func blocks(k Kind) bool { return k.Topology() || k == Blackhole }

// interrupted reports whether another fault that blocks traffic began after rec's reachable
// moment and before its first handler start (or before it timed out).
func (r *ChaosResult) interrupted(o *Outcome, rec Recovery) bool {
	to := rec.Reachable.Add(rec.Took)
	for _, o2 := range r.Outcomes {
		if o2 != o && blocks(o2.Fault.Kind) && o2.Began.After(rec.Reachable) && o2.Began.Before(to) {
			return true
		}
	}
	return false
}

// ownRecovery is rec's recovery measured from when the writer was really reachable: if another
// fault that blocks traffic (a blackhole, a topology fault) was still under way at rec's
// reachable moment, from the end of that one instead. It reports false when that end is not
// before the end of rec's measurement (the handler start it saw, or its timeout): rec then
// measured the other fault, not its own.
func (r *ChaosResult) ownRecovery(o *Outcome, rec Recovery) (time.Duration, bool) {
	eff := rec.Reachable
	for changed := true; changed; {
		changed = false
		for _, o2 := range r.Outcomes {
			if o2 != o && blocks(o2.Fault.Kind) && !eff.Before(o2.Began) && eff.Before(o2.Ended) {
				eff, changed = o2.Ended, true
			}
		}
	}
	end := rec.Reachable.Add(rec.Took)
	if eff != rec.Reachable && !eff.Before(end) {
		return 0, false
	}
	return end.Sub(eff), true
}

// Percentile returns the p-th percentile (nearest rank) of ds, 0 for none.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func fmtRecoveries(rs []Recovery) string {
	out := "["
	for i, r := range rs {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprintf("%s %s", r.Phase, r.Took.Round(time.Millisecond))
		if r.Err != nil {
			out += " (none)"
		}
	}
	return out + "]"
}
