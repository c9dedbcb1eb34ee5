package faultlab

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Kind is a kind of fault.
type Kind string

// The fault kinds. Topology faults change which node is the writer and are serialized by a
// schedule; the others (network and process faults) may overlap them.
const (
	PlannedFailover    Kind = "planned_failover"      // writer read-only, replica caught up and promoted, endpoint follows after Window
	StaleEndpoint      Kind = "stale_endpoint"        // roles switch; the endpoint stays on the demoted node for Window
	ReversedFailover   Kind = "reversed_failover"     // the switch happens, work is acknowledged for Window, and it reverses
	SplitBrain         Kind = "split_brain"           // the replica is promoted while the old writer stays writable
	Restart            Kind = "restart"               // the writer is restarted
	CommitLoss         Kind = "commit_loss"           // replication cut, writer killed, replica promoted; endpoint moves after Window
	CommitLossFlipBack Kind = "commit_loss_flip_back" // commit loss, then a flip back to the old writer Window later, during re-assertion
	NoWriter           Kind = "no_writer"             // the writer turns read-only, no writer for Window, then the replica is promoted
	Blackhole          Kind = "blackhole"             // the endpoint passes no bytes for Window
	Latency            Kind = "latency"               // the endpoint adds 100ms each way for Window
	TerminateBackends  Kind = "terminate_backends"    // pg_terminate_backend of every client backend on the writer
	AdminShutdown      Kind = "admin_shutdown"        // backends terminated, then the writer restarted a second later
	WorkerCrash        Kind = "worker_crash"          // a worker process is SIGKILLed mid-batch
	CredentialRotation Kind = "credential_rotation"   // the password changes every 3 s for Window, the old one revoked
)

// AllKinds lists every kind.
var AllKinds = []Kind{PlannedFailover, StaleEndpoint, ReversedFailover, SplitBrain, Restart, CommitLoss,
	CommitLossFlipBack, NoWriter, Blackhole, Latency, TerminateBackends, AdminShutdown, WorkerCrash, CredentialRotation}

// ParseKinds parses a comma-separated list of kinds.
func ParseKinds(s string) ([]Kind, error) {
	var out []Kind
	for _, f := range strings.Split(s, ",") {
		k := Kind(strings.TrimSpace(f))
		if !slices.Contains(AllKinds, k) {
			return nil, fmt.Errorf("unknown fault kind %q (known: %v)", f, AllKinds)
		}
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out, nil
}

// Topology reports whether the kind changes (or restarts) the writer; such faults never
// overlap each other.
func (k Kind) Topology() bool {
	switch k {
	case PlannedFailover, StaleEndpoint, ReversedFailover, SplitBrain, Restart, CommitLoss, CommitLossFlipBack, NoWriter, AdminShutdown:
		return true
	}
	return false
}

// LosesCommits reports whether the kind makes the new writer miss acknowledged commits.
func (k Kind) LosesCommits() bool {
	return k == CommitLoss || k == CommitLossFlipBack || k == SplitBrain || k == ReversedFailover
}

// Fault is one fault to inject.
type Fault struct {
	Kind Kind
	// Start is the offset from the start of a schedule; Run ignores it.
	Start time.Duration
	// Window is the kind's main duration (see the kinds); zero takes the kind's default.
	Window time.Duration
	// Inspect, if set, runs after the fault and before the cluster is brought back into shape
	// (the old writer still as the fault left it), e.g. to look for writes on it.
	Inspect func(ctx context.Context, c *Cluster, o *Outcome) error
}

// String is "kind@start/window".
func (f Fault) String() string {
	return fmt.Sprintf("%s@%s/%s", f.Kind, f.Start.Round(time.Millisecond), f.Window.Round(time.Millisecond))
}

func (f Fault) window() time.Duration {
	if f.Window > 0 {
		return f.Window
	}
	switch f.Kind {
	case PlannedFailover:
		return 500 * time.Millisecond
	case StaleEndpoint:
		return 5 * time.Second
	case ReversedFailover:
		return 1500 * time.Millisecond
	case CommitLossFlipBack:
		return time.Second
	case NoWriter:
		return 20 * time.Second
	case Blackhole:
		return 10 * time.Second
	case Latency:
		return 5 * time.Second
	case CredentialRotation:
		return 10 * time.Second
	}
	return 0
}

// Recovery is one "writer reachable again → first handler start after it" measurement.
type Recovery struct {
	Phase     string
	Reachable time.Time
	Took      time.Duration
	Err       error // ErrNoRecovery when no handler started within the limit
	// Slowed is set when the fault itself delayed every round trip during the recovery
	// (commit loss with a flip back puts its new writer behind 150 ms of latency).
	Slowed bool
}

// Outcome is what one fault did.
type Outcome struct {
	Fault Fault
	Began time.Time // the fault started
	Ended time.Time // the fault is over (writer reachable, window over); shape restored later
	// Restored is when the cluster was back in shape (one writer behind the endpoint, one
	// streaming replica).
	Restored   time.Time
	OldWriter  int
	Writer     int // the writer afterwards
	Recoveries []Recovery
	Extra      map[string]time.Duration // other timings: detection, takeover
	Marks      map[string]time.Time     // moments: endpoint moved, split brain detected, no writer from
	// Counts: "accepted_no_writer" is how many connections the endpoint accepted while no
	// writer existed.
	Counts map[string]int64
	// CommitsLost counts acknowledged enqueues that the new writer lacked right after its
	// promotion: proof that the fault really lost commits (commit-loss kinds only).
	CommitsLost int
	Err         error
}

// LostCommits reports whether the fault made a writer miss acknowledged commits.
func (o *Outcome) LostCommits() bool { return o.CommitsLost > 0 }

// lossWindow is how long the replica stays cut off before the primary is killed.
const lossWindow = 400 * time.Millisecond

// Run injects f into the cluster under the load, measures recoveries, and brings the cluster
// back into shape. It blocks for the fault's duration. Outcome.Err is the error, if any; after
// an error of a topology fault, the cluster's shape is unknown.
func Run(ctx context.Context, c *Cluster, l *Load, f Fault) *Outcome {
	o := &Outcome{Fault: f, Began: time.Now(), OldWriter: c.Writer(), Extra: map[string]time.Duration{}, Marks: map[string]time.Time{}, Counts: map[string]int64{}}
	o.Err = run(ctx, c, l, f, o)
	if o.Ended.IsZero() {
		o.Ended = time.Now()
	}
	if o.Err == nil && f.Inspect != nil {
		o.Err = f.Inspect(ctx, c, o)
	}
	if o.Err == nil {
		o.Err = restore(ctx, c, o)
	}
	o.Restored = time.Now()
	o.Writer = c.Writer()
	if o.Err != nil {
		o.Err = fmt.Errorf("%s: %w", f.Kind, o.Err)
	}
	return o
}

// recover measures a recovery from reachable, and ends the fault's window there.
func (o *Outcome) recover(ctx context.Context, l *Load, phase string, reachable time.Time) error {
	o.Ended = reachable
	d, err := l.FirstStartAfter(ctx, reachable)
	o.Recoveries = append(o.Recoveries, Recovery{Phase: phase, Reachable: reachable, Took: d, Err: err})
	if err != nil && !errors.Is(err, ErrNoRecovery) {
		return err
	}
	return nil
}

func run(ctx context.Context, c *Cluster, l *Load, f Fault, o *Outcome) error {
	w, r := c.Writer(), c.Replica()
	win := f.window()
	switch f.Kind {
	case PlannedFailover, StaleEndpoint:
		if err := c.Nodes[w].DemoteReadOnly(ctx); err != nil {
			return err
		}
		if f.Kind == PlannedFailover { // a planned switchover waits for the replica
			if err := c.WaitCaughtUp(ctx, w, r); err != nil {
				return err
			}
		}
		if err := c.promote(ctx, r); err != nil {
			return err
		}
		if err := pause(ctx, win); err != nil {
			return err
		}
		c.Proxy.SetTarget(c.Addr(r))
		return o.recover(ctx, l, "endpoint switched", time.Now())
	case ReversedFailover:
		if err := c.Nodes[w].DemoteReadOnly(ctx); err != nil {
			return err
		}
		if err := c.promote(ctx, r); err != nil {
			return err
		}
		promoted := time.Now()
		c.Proxy.SetTarget(c.Addr(r))
		if err := o.recover(ctx, l, "switch", time.Now()); err != nil {
			return err
		}
		if err := pause(ctx, win); err != nil { // work is acknowledged on the new writer...
			return err
		}
		// ...and the failover reverses: the old writer is back, without what the other took.
		if err := c.Nodes[r].DemoteReadOnly(ctx); err != nil {
			return err
		}
		if err := c.Nodes[w].UndoReadOnly(ctx); err != nil {
			return err
		}
		if err := l.DiscardClaims(ctx, c.Direct(r), promoted); err != nil {
			return err
		}
		// A rotation made on the other side is lost with its commits: the
		// credential service's current password is applied here again.
		if err := c.writable(ctx, w); err != nil {
			return err
		}
		c.Proxy.SetTarget(c.Addr(w))
		return o.recover(ctx, l, "flip back", time.Now())
	case SplitBrain:
		if err := c.promote(ctx, r); err != nil { // the old writer stays writable
			return err
		}
		c.Proxy.SetTarget(c.Addr(r))
		moved := time.Now()
		if err := o.recover(ctx, l, "endpoint switched", moved); err != nil {
			return err
		}
		o.Marks["endpoint_moved"] = moved
		err := poll(ctx, 10*time.Second, "split-brain detection", func() (bool, error) {
			at, ok := c.StaleDetectedAfter(w, moved.Add(-time.Second))
			if ok {
				o.Extra["split_brain_detected"] = max(at.Sub(moved), 0)
				o.Marks["split_brain_detected"] = at
			}
			return ok, nil
		})
		return err
	case Restart:
		if err := c.Nodes[w].Restart(ctx); err != nil {
			return err
		}
		return o.recover(ctx, l, "server restarted", time.Now())
	case AdminShutdown:
		if _, err := c.Nodes[w].TerminateBackends(ctx); err != nil {
			return err
		}
		if err := o.recover(ctx, l, "backends terminated", time.Now()); err != nil {
			return err
		}
		if err := pause(ctx, time.Second); err != nil {
			return err
		}
		if err := c.Nodes[w].Restart(ctx); err != nil {
			return err
		}
		return o.recover(ctx, l, "server restarted", time.Now())
	case CommitLoss:
		if err := c.loseCommits(ctx, l, o, w, r); err != nil {
			return err
		}
		if err := pause(ctx, win); err != nil { // slow detection: the endpoint still on the dead node
			return err
		}
		c.Proxy.SetTarget(c.Addr(r))
		return o.recover(ctx, l, "endpoint switched", time.Now())
	case CommitLossFlipBack:
		if err := c.loseCommits(ctx, l, o, w, r); err != nil {
			return err
		}
		c.Proxy.SetLatency(150 * time.Millisecond) // the new writer is slow: re-assertion takes a while
		c.Proxy.SetTarget(c.Addr(r))
		if err := o.recover(ctx, l, "endpoint switched", time.Now()); err != nil {
			c.Proxy.SetLatency(0)
			return err
		}
		o.Recoveries[len(o.Recoveries)-1].Slowed = true
		if err := pause(ctx, win); err != nil {
			c.Proxy.SetLatency(0)
			return err
		}
		// Flip back while the first re-assertion still runs: the old writer comes back (crash
		// recovery keeps its commits), the new one turns read-only.
		err := c.Nodes[w].Restart(ctx)
		if err == nil {
			err = c.Nodes[r].DemoteReadOnly(ctx)
		}
		c.Proxy.SetLatency(0)
		if err != nil {
			return err
		}
		if err := c.writable(ctx, w); err != nil {
			return err
		}
		c.Proxy.SetTarget(c.Addr(w))
		return o.recover(ctx, l, "flip back", time.Now())
	case NoWriter:
		if err := c.Nodes[w].DemoteReadOnly(ctx); err != nil {
			return err
		}
		o.Marks["no_writer_from"] = time.Now()
		before := c.Proxy.Accepted()
		if err := pause(ctx, win); err != nil {
			return err
		}
		o.Counts["accepted_no_writer"] = c.Proxy.Accepted() - before
		o.Marks["no_writer_until"] = time.Now()
		if err := c.WaitCaughtUp(ctx, w, r); err != nil {
			return err
		}
		if err := c.promote(ctx, r); err != nil {
			return err
		}
		c.Proxy.SetTarget(c.Addr(r))
		return o.recover(ctx, l, "writer promoted", time.Now())
	case Blackhole:
		c.Proxy.Blackhole(true)
		err := pause(ctx, win)
		c.Proxy.Blackhole(false)
		if err != nil {
			return err
		}
		return o.recover(ctx, l, "traffic flows again", time.Now())
	case Latency:
		c.Proxy.SetLatency(100 * time.Millisecond)
		err := pause(ctx, win)
		c.Proxy.SetLatency(0)
		return err
	case TerminateBackends:
		if _, err := c.Nodes[w].TerminateBackends(ctx); err != nil {
			return err
		}
		return o.recover(ctx, l, "backends terminated", time.Now())
	case WorkerCrash:
		took, err := CrashWorker(ctx, c, l)
		o.Extra["crash_takeover"] = took
		return err
	case CredentialRotation:
		end := time.Now().Add(win)
		rotations := 0
		for time.Now().Before(end) {
			if err := c.RotatePassword(ctx); err == nil {
				rotations++
			} else if ctx.Err() != nil {
				return ctx.Err()
			}
			if err := pause(ctx, min(3*time.Second, time.Until(end))); err != nil {
				return err
			}
		}
		if rotations == 0 {
			return errors.New("no password rotation succeeded")
		}
		return nil
	}
	return fmt.Errorf("unknown fault kind %q", f.Kind)
}

// loseCommits cuts the replica off, lets the writer acknowledge commits for lossWindow, kills
// it, promotes the replica, and counts the acknowledged enqueues the new writer lacks.
func (c *Cluster) loseCommits(ctx context.Context, l *Load, o *Outcome, w, r int) error {
	if err := c.Nodes[r].CutReplication(ctx); err != nil {
		return err
	}
	cut := time.Now()
	if err := pause(ctx, lossWindow); err != nil {
		return err
	}
	if err := c.Nodes[w].Kill(); err != nil {
		return err
	}
	killed := time.Now()
	if err := c.promote(ctx, r); err != nil {
		return err
	}
	// What was acknowledged after the cut and before the kill is on the dead node only.
	var keys []string
	l.mu.Lock()
	for k, at := range l.acked {
		if at.After(cut) && at.Before(killed) {
			keys = append(keys, k)
		}
	}
	l.mu.Unlock()
	var missing int
	err := retryKilled(ctx, func() error {
		return c.direct[r].QueryRow(ctx, `SELECT count(*) FROM unnest($2::text[]) AS u(key)
			WHERE NOT EXISTS (SELECT 1 FROM `+l.table("batch_key_digest")+` k WHERE k.digest = `+l.table("key_digest")+`($1, u.key))`,
			l.cfg.Queue, keys).Scan(&missing)
	})
	if err != nil {
		return fmt.Errorf("count lost commits: %w", err)
	}
	o.CommitsLost = missing
	return nil
}

// restore brings the cluster back into shape: the node that is not the writer becomes a
// streaming standby of it (pg_rewind where the timelines diverged), unless it already is one.
func restore(ctx context.Context, c *Cluster, o *Outcome) error {
	if !o.Fault.Kind.Topology() || o.Fault.Kind == Restart || o.Fault.Kind == AdminShutdown {
		return nil
	}
	w, r := c.Writer(), c.Replica()
	if err := c.Nodes[r].DemoteToStandby(ctx, c.Nodes[w]); err != nil {
		return fmt.Errorf("rejoin node %d as a standby: %w", r, err)
	}
	return nil
}
