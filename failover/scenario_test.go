package failover_test

// Fault scenarios on a real primary and streaming replica behind the test
// proxy, each under faultlab's load (producers cutting batches with a
// batch.Builder, runners recording every execution) through the failover
// pool, each ending with faultlab's invariant check on the final writer.
// SKIPLOCK_FAULT_REPEAT=N repeats every scenario N times (for soaks, use
// the bench harness: -scenarios chaos).

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/faultlab"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/queue"
)

// recoveries collects, across scenarios, the time from "a writer is
// reachable through the endpoint" to the first handler start.
var recoveries struct {
	mu sync.Mutex
	d  []time.Duration
}

func recordRecoveries(t *testing.T, name string, o *faultlab.Outcome) {
	t.Helper()
	for _, r := range o.Recoveries {
		require.NoError(t, r.Err, "%s (%s)", name, r.Phase)
		t.Logf("%s (%s): first handler start %s after a writer became reachable", name, r.Phase, r.Took.Round(time.Millisecond))
		limit := 3 * time.Second
		if r.Slowed {
			// The fault itself puts 150 ms each way on every round trip (connection
			// set-up, probe, re-assertion, claim): about 2.5 s alone, 3.1 s once
			// under the full suite's load. 5 s is about 16 such round trips.
			limit = 5 * time.Second
		}
		require.Less(t, r.Took, limit, "recovery took too long")
		recoveries.mu.Lock()
		recoveries.d = append(recoveries.d, r.Took)
		recoveries.mu.Unlock()
	}
}

func repeats() int {
	if n, err := strconv.Atoi(os.Getenv("SKIPLOCK_FAULT_REPEAT")); err == nil && n > 1 {
		return n
	}
	return 1
}

// scenarioRun is one fault under load on a fresh cluster.
type scenarioRun struct {
	c   *cluster
	l   *faultlab.Load
	o   *faultlab.Outcome
	rep *faultlab.Report
}

// runScenario starts a cluster and the load, injects f after a steady
// state, and checks the invariants on the final writer.
func runScenario(t *testing.T, f faultlab.Fault, opts *pgtest.Options, setup func(c *cluster)) *scenarioRun {
	t.Helper()
	c := newClusterWith(t, opts)
	if setup != nil {
		setup(c)
	}
	pool := c.newPool(nil)
	l := startLoad(t, pool, nil)
	runFor(1500 * time.Millisecond) // steady state before the fault
	o := faultlab.Run(ctxFor(t, 5*time.Minute), c.Cluster, l, f)
	require.NoError(t, o.Err)
	runFor(1500 * time.Millisecond) // steady state after it
	for i, r := range l.Runners {
		select {
		case <-r.Stopped():
			t.Fatalf("runner %d gave up during the fault", i)
		default:
		}
	}
	rep := finish(t, c, l)
	reassertedDone := l.Client.JournalStats().ReassertedCompletions // the runners share the client
	t.Logf("%s: %s commits_lost_at_promotion=%d reasserted_enqueues=%d reasserted_completions=%d generations=%d",
		f.Kind, rep, o.CommitsLost, l.Client.ReassertedEnqueues(), reassertedDone, pool.Generation())
	return &scenarioRun{c: c, l: l, o: o, rep: rep}
}

// scenario runs one fault (repeats() times, in parallel with other
// scenarios: every run has its own servers) and asserts recovery and the
// invariants.
func scenario(t *testing.T, f faultlab.Fault, more func(t *testing.T, s *scenarioRun)) {
	for i := range repeats() {
		t.Run(fmt.Sprintf("#%d", i+1), func(t *testing.T) {
			t.Parallel()
			s := runScenario(t, f, nil, nil)
			recordRecoveries(t, string(f.Kind), s.o)
			if more != nil {
				more(t, s)
			}
			requireInvariants(t, string(f.Kind), s.rep, f.Kind.LosesCommits())
		})
	}
}

// TestScenarios runs the classic fault scenarios in parallel, then checks
// the median and maximum recovery across them.
func TestScenarios(t *testing.T) {
	t.Run("group", func(t *testing.T) {
		t.Run("PlannedFailover", func(t *testing.T) { scenario(t, faultlab.Fault{Kind: faultlab.PlannedFailover}, nil) })
		t.Run("StaleEndpoint", func(t *testing.T) { scenario(t, faultlab.Fault{Kind: faultlab.StaleEndpoint}, nil) })
		t.Run("ReversedFailover", func(t *testing.T) { scenario(t, faultlab.Fault{Kind: faultlab.ReversedFailover}, nil) })
		t.Run("SplitBrain", testSplitBrain)
		t.Run("Blackhole", func(t *testing.T) { scenario(t, faultlab.Fault{Kind: faultlab.Blackhole}, nil) })
		t.Run("AdminShutdown", func(t *testing.T) { scenario(t, faultlab.Fault{Kind: faultlab.AdminShutdown}, nil) })
		t.Run("WorkerCrash", func(t *testing.T) {
			scenario(t, faultlab.Fault{Kind: faultlab.WorkerCrash}, func(t *testing.T, s *scenarioRun) {
				took := s.o.Extra["crash_takeover"]
				t.Logf("worker crash: the killed worker's batch finished by another %s after the kill (lease %s)", took.Round(time.Millisecond), faultlab.CrashLease)
				require.Less(t, took, faultlab.CrashLease+3*time.Second)
			})
		})
	})
	recoveries.mu.Lock()
	d := slices.Clone(recoveries.d)
	recoveries.mu.Unlock()
	if len(d) < 5 {
		t.Logf("only %d recovery samples (scenarios filtered out); nothing to summarise", len(d))
		return
	}
	slices.Sort(d)
	median := d[len(d)/2]
	t.Logf("recovery over %d samples: median %s, max %s, all %v", len(d), median.Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond), d)
	require.Less(t, median, time.Second)
	require.Less(t, d[len(d)-1], 3*time.Second)
}

// testSplitBrain: the old writer stays writable while the endpoint moves;
// no statement may begin on it after it was detected as stale.
func testSplitBrain(t *testing.T) {
	var late int
	var lastAfter time.Duration
	f := faultlab.Fault{Kind: faultlab.SplitBrain, Inspect: func(ctx context.Context, c *faultlab.Cluster, o *faultlab.Outcome) error {
		detected := o.Marks["split_brain_detected"]
		if err := pause(ctx, 500*time.Millisecond); err != nil {
			return err
		}
		// A transaction's now() is when the server began it. Work dispatched
		// before detection can begin on the server slightly after it (it was
		// in flight); anything beginning later than inFlight after detection
		// was dispatched after it.
		const inFlight = 250 * time.Millisecond
		var latest *time.Time
		err := c.Direct(o.OldWriter).QueryRow(ctx, `SELECT
			(SELECT count(*) FROM skiplock.batch_done WHERE done_at > $1) +
			(SELECT count(*) FROM skiplock.batch WHERE created_at > $1 OR attempted_at > $1),
			greatest((SELECT max(done_at) FROM skiplock.batch_done), (SELECT max(greatest(created_at, attempted_at)) FROM skiplock.batch))`,
			detected.Add(inFlight)).Scan(&late, &latest)
		if latest != nil {
			lastAfter = latest.Sub(detected)
		}
		return err
	}}
	scenario(t, f, func(t *testing.T, s *scenarioRun) {
		t.Logf("split brain detected %s after the endpoint moved; last write on the old writer began %s after detection",
			s.o.Extra["split_brain_detected"].Round(time.Millisecond), lastAfter.Round(time.Millisecond))
		require.Zero(t, late, "writes began on the old writer after it was detected as stale")
	})
}

func pause(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// requireCommitLoss asserts the fault really lost acknowledged commits
// (else the scenario proves nothing about guarantee 1), then the invariants.
func requireCommitLoss(t *testing.T, s *scenarioRun) {
	t.Helper()
	t.Logf("%s: the new writer lacked %d acknowledged enqueues at its promotion; check: lost=%d of acked=%d",
		s.o.Fault.Kind, s.o.CommitsLost, s.rep.Lost, s.rep.Acked)
	require.Positive(t, s.o.CommitsLost, "the fault did not lose any acknowledged commit: it proves nothing")
	recordRecoveries(t, string(s.o.Fault.Kind), s.o)
	requireInvariants(t, string(s.o.Fault.Kind), s.rep, true)
}

// TestScenarioCommitLoss: the replica's stream is cut, the primary keeps
// acknowledging commits for a few hundred ms and is killed, the replica is
// promoted and the endpoint moves to it at once; the old primary is rewound
// and rejoins as a standby. Every acknowledged enqueue must survive.
func TestScenarioCommitLoss(t *testing.T) {
	t.Parallel()
	requireCommitLoss(t, runScenario(t, faultlab.Fault{Kind: faultlab.CommitLoss}, nil, nil))
}

// TestScenarioCommitLossSlowDetection: as TestScenarioCommitLoss, but the
// endpoint moves 30 s and 60 s after the fault (Patroni's TTL, DNS
// settling), longer than any window in the library. Both run at once.
func TestScenarioCommitLossSlowDetection(t *testing.T) {
	t.Parallel()
	// Not parallel subtests: -parallel defaults to GOMAXPROCS (2 here) and
	// both mostly wait; they run side by side in goroutines instead.
	type result struct {
		delay time.Duration
		s     *scenarioRun
		err   error
	}
	delays := []time.Duration{30 * time.Second, 60 * time.Second}
	results := make([]result, len(delays))
	var wg sync.WaitGroup
	for i, d := range delays {
		results[i].delay = d
		c := newCluster(t)
		pool := c.newPool(nil)
		l := startLoad(t, pool, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			runFor(1500 * time.Millisecond)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			o := faultlab.Run(ctx, c.Cluster, l, faultlab.Fault{Kind: faultlab.CommitLoss, Window: d})
			if o.Err != nil {
				results[i].err = o.Err
				return
			}
			runFor(1500 * time.Millisecond)
			rep, err := l.Finish(ctx, c.Direct(c.Writer()), 90*time.Second)
			results[i].s, results[i].err = &scenarioRun{c: c, l: l, o: o, rep: rep}, err
		}()
	}
	wg.Wait()
	for _, r := range results {
		t.Run("endpoint_after_"+r.delay.String(), func(t *testing.T) {
			require.NoError(t, r.err)
			requireCommitLoss(t, r.s)
		})
	}
}

// TestScenarioCommitLossFlipBack: commit loss, then — while the new writer
// is slow (proxy latency) and still re-asserting — the failover reverses:
// the old primary comes back with its commits, the new writer turns
// read-only. What either acknowledged must survive on the final writer.
func TestScenarioCommitLossFlipBack(t *testing.T) {
	t.Parallel()
	requireCommitLoss(t, runScenario(t, faultlab.Fault{Kind: faultlab.CommitLossFlipBack}, nil, nil))
}

// TestScenarioNoWriter: the writer turns read-only and no writer exists for
// 20 s (the endpoint on a read-only node), then the replica is promoted.
// The pool must back off (bounded connection attempts through the proxy),
// producers must neither spin nor give up, runners must resume.
func TestScenarioNoWriter(t *testing.T) {
	t.Parallel()
	const window = 20 * time.Second
	s := runScenario(t, faultlab.Fault{Kind: faultlab.NoWriter, Window: window}, nil, nil)
	from, until := s.o.Marks["no_writer_from"], s.o.Marks["no_writer_until"]
	accepted := s.o.Counts["accepted_no_writer"]
	// Calls that began up to a retry window before: a call may block
	// through the whole window, which is fine (neither spinning nor giving up).
	calls := s.l.EnqueueCalls(from.Add(-time.Minute), until)
	perProducer := map[int]int{}
	var untyped []error
	for _, c := range calls {
		if c.At.Add(c.Took).Before(from) {
			continue // over before the window
		}
		perProducer[c.Producer]++
		var nw *failover.NoWriterError
		if c.Err != nil && !errors.As(c.Err, &nw) {
			untyped = append(untyped, c.Err)
		}
	}
	t.Logf("no writer for %s: %d connections accepted by the endpoint, enqueue calls during it per producer %v, %d errors other than *failover.NoWriterError",
		until.Sub(from).Round(time.Millisecond), accepted, perProducer, len(untyped))
	require.Less(t, accepted, int64(15*window/time.Second), "connection attempts must be bounded while no writer exists")
	for p := range s.l.Config().Producers {
		n := perProducer[p]
		require.LessOrEqual(t, n, int(window/(250*time.Millisecond)), "producer %d spun: %d enqueue calls in %s", p, n, window)
	}
	require.Empty(t, untyped, "while no writer exists, callers should get a typed *failover.NoWriterError (or wait)")
	// Neither gave up: every producer has its enqueues acknowledged again
	// once a writer exists.
	for p := range s.l.Config().Producers {
		var acked bool
		for _, c := range s.l.EnqueueCalls(until, time.Now()) {
			acked = acked || c.Producer == p && c.Err == nil
		}
		require.True(t, acked, "producer %d got no enqueue acknowledged after the writer came back", p)
	}
	require.NotEmpty(t, s.c.eventsOf(failover.EventNoWriter))
	recordRecoveries(t, "no writer", s.o)
	requireInvariants(t, "no writer", s.rep, false)
}

// TestScenarioRotatingCredentials: the pool logs in as a password role whose
// password a BeforeConnect hook fetches; it changes every 3 s (the old one
// revoked at once) while a planned failover forces new connections.
func TestScenarioRotatingCredentials(t *testing.T) {
	t.Parallel()
	c := newClusterWith(t, &pgtest.Options{PasswordRoles: []string{faultlab.RoleDefault}})
	ctx := ctxFor(t, 5*time.Minute)
	require.NoError(t, c.EnableCredentials(ctx, faultlab.RoleDefault))
	pool := c.newPool(nil)
	l := startLoad(t, pool, nil)
	runFor(1500 * time.Millisecond)
	rot := make(chan *faultlab.Outcome, 1)
	go func() {
		rot <- faultlab.Run(ctx, c.Cluster, l, faultlab.Fault{Kind: faultlab.CredentialRotation, Window: 15 * time.Second})
	}()
	runFor(4 * time.Second) // a rotation or two first
	o := faultlab.Run(ctx, c.Cluster, l, faultlab.Fault{Kind: faultlab.PlannedFailover})
	ro := <-rot
	require.NoError(t, ro.Err)
	require.NoError(t, o.Err)
	runFor(1500 * time.Millisecond)
	rep := finish(t, c, l)
	t.Logf("rotating credentials: %d rotations; %s; generations=%d", c.Rotations(), rep, pool.Generation())
	require.GreaterOrEqual(t, c.Rotations(), 4)
	recordRecoveries(t, "rotating credentials", o)
	requireInvariants(t, "rotating credentials", rep, false)
}

var chaosSeed = flag.Int64("faultlab.seed", 0, "seed of TestChaosSchedule (0: $SKIPLOCK_CHAOS_SEED, else the time)")

// TestChaosSchedule runs a short randomized fault schedule (every kind,
// overlapping where allowed) drawn from a printed seed; -faultlab.seed or
// $SKIPLOCK_CHAOS_SEED replays it. SKIPLOCK_CHAOS_DURATION lengthens it;
// SKIPLOCK_CHAOS_KINDS (comma-separated faultlab kinds) narrows it.
func TestChaosSchedule(t *testing.T) {
	t.Parallel()
	seed := *chaosSeed
	if seed == 0 {
		if s, err := strconv.ParseInt(os.Getenv("SKIPLOCK_CHAOS_SEED"), 10, 64); err == nil {
			seed = s
		} else {
			seed = time.Now().UnixNano() % 1_000_000
		}
	}
	d := 2 * time.Minute
	if v, err := time.ParseDuration(os.Getenv("SKIPLOCK_CHAOS_DURATION")); err == nil && v > 0 {
		d = v
	}
	var kinds []faultlab.Kind // nil: every kind
	if v := os.Getenv("SKIPLOCK_CHAOS_KINDS"); v != "" {
		for _, k := range strings.Split(v, ",") {
			require.Contains(t, faultlab.AllKinds, faultlab.Kind(k), "SKIPLOCK_CHAOS_KINDS")
			kinds = append(kinds, faultlab.Kind(k))
		}
	}
	t.Logf("chaos seed %d (replay: go test ./failover -run TestChaosSchedule -faultlab.seed=%d)", seed, seed)
	res, err := faultlab.RunChaos(ctxFor(t, d+10*time.Minute), &faultlab.ChaosConfig{
		Seed: seed, Duration: d, Kinds: kinds, Logf: t.Logf,
		Load: &faultlab.LoadConfig{Logger: testLogger(t)},
	})
	if res != nil && res.Final != nil {
		t.Logf("chaos: %s", res)
	}
	require.NoError(t, err)
	require.Zero(t, res.Lost, "acknowledged batches were lost")
	require.Zero(t, res.Stale, "a stale token's completion was accepted")
	require.Zero(t, res.DoneTwice, "batches were completed more than once")
	require.Zero(t, res.RecoveryTimeouts, "no handler started after a writer became reachable")
	require.Equal(t, res.Final.Acked, res.Final.Completed, "every acknowledged batch should be completed after the drain")
}

// workerEnv and workerMain are the crash scenario's worker process (see
// TestMain): the test binary re-executed by faultlab.CrashWorker.
const workerEnv = faultlab.CrashWorkerEnv

func workerMain() int { return faultlab.CrashWorkerMain() }

// TestControlPlainPoolStaysBroken runs the stale-endpoint fault against a
// plain pgxpool: its connections to the demoted node keep failing writes
// with 25006 long after the endpoint moved to the new writer. This is the
// failure the failover pool exists for, and proof the scenarios can fail.
func TestControlPlainPoolStaysBroken(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	ctx := ctxFor(t, 2*time.Minute)
	cfg := c.poolConfig()
	cfg.MinConns = 4
	plain, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(plain.Close)
	client, err := queue.New(plain, &queue.Config{Schema: testSchema, RetryWindow: time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close() })
	enqueue := func(i int) error {
		_, err := client.Enqueue(ctx, queue.EnqueueParams{Queue: loadQueue,
			Meta: batch.Meta{Source: batch.Source{Topic: "control", Start: int64(i), End: int64(i) + 1}}})
		return err
	}
	// Warm the pool so it holds connections to the writer.
	for i := 0; i < 20; i++ {
		require.NoError(t, enqueue(i))
	}
	require.NoError(t, c.nodes[0].DemoteReadOnly(ctx))
	require.NoError(t, c.nodes[1].Promote(ctx))
	runFor(5 * time.Second)
	c.proxy.SetTarget(c.addr(1))
	runFor(3 * time.Second) // well past the window

	failures := 0
	for i := 100; i < 120; i++ {
		err := enqueue(i)
		var pgErr *pgconn.PgError
		if err != nil && errorsAs(err, &pgErr) && pgErr.Code == "25006" {
			failures++
		}
	}
	t.Logf("plain pgxpool: %d of 20 enqueues still failed with 25006, 3s after the endpoint moved to the new writer", failures)
	require.Positive(t, failures, "the control must show the failure, or the scenarios prove nothing")
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	pgtest.WaitFor(t, d, what, cond)
}
