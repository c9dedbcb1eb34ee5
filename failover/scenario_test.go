package failover_test

// Fault scenarios on a real primary and streaming replica behind the test
// proxy, each under load (two producers, four workers) through the
// failover pool, each ending with the shared invariant check. The default
// run uses short forms; SKIPLOCK_FAULT_REPEAT=N repeats every scenario N
// times (for soaks, use the bench harness).

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/queue"
)

// recoveries collects, across scenarios, the time from "a writer is
// reachable through the endpoint" to the first successful claim.
var recoveries struct {
	mu sync.Mutex
	d  []time.Duration
}

func recordRecovery(t *testing.T, name string, d time.Duration) {
	t.Logf("%s: first claim %s after a writer became reachable", name, d.Round(time.Millisecond))
	require.Less(t, d, 3*time.Second, "recovery took too long")
	recoveries.mu.Lock()
	recoveries.d = append(recoveries.d, d)
	recoveries.mu.Unlock()
}

func repeats() int {
	if n, err := strconv.Atoi(os.Getenv("SKIPLOCK_FAULT_REPEAT")); err == nil && n > 1 {
		return n
	}
	return 1
}

// scenario runs one fault under load and checks the invariants on the
// node that ends as the writer.
func scenario(t *testing.T, name string, fault func(t *testing.T, c *cluster, l *load) (finalWriter int)) {
	for i := 0; i < repeats(); i++ {
		t.Run(fmt.Sprintf("%s#%d", name, i+1), func(t *testing.T) {
			c := newCluster(t)
			pool := c.newPool(nil)
			l := startLoad(t, pool, loadConfig{producers: 2, workers: 4})
			runFor(1500 * time.Millisecond) // steady state before the fault
			final := fault(t, c, l)
			runFor(1500 * time.Millisecond) // steady state after it
			rep := l.finish(c.direct(final))
			reassertedEnq := l.client.ReassertedEnqueues()
			var reassertedDone int64
			for _, r := range l.runners {
				reassertedDone += r.Stats().Reasserted
			}
			t.Logf("%s: acked=%d completed=%d queued=%d lost=%d stale_completions=%d duplicates=%d executions=%d reasserted_enqueues=%d reasserted_completions=%d generations=%d producer_errors=%d",
				name, rep.acked, rep.completed, rep.queued, rep.lost, rep.staleCompletions, rep.duplicates, rep.executions,
				reassertedEnq, reassertedDone, pool.Generation(), l.prodErrs)
			require.Positive(t, rep.acked)
			require.Zero(t, rep.lost, "acknowledged batches were lost")
			require.Zero(t, rep.staleCompletions, "a stale token's completion was accepted")
			require.Equal(t, rep.acked, rep.completed, "every acknowledged batch should be completed after the drain")
		})
	}
}

func TestScenarioPlannedFailover(t *testing.T) {
	scenario(t, "planned failover", func(t *testing.T, c *cluster, l *load) int {
		ctx := ctxFor(t, time.Minute)
		require.NoError(t, c.nodes[0].DemoteReadOnly(ctx))
		c.waitCaughtUp(0, 1)
		require.NoError(t, c.nodes[1].Promote(ctx))
		runFor(500 * time.Millisecond) // the endpoint follows after a delay
		c.proxy.SetTarget(c.addr(1))
		reachable := time.Now()
		recordRecovery(t, "planned failover", l.firstClaimAfter(reachable, 10*time.Second))
		return 1
	})
}

func TestScenarioStaleEndpoint(t *testing.T) {
	scenario(t, "stale endpoint", func(t *testing.T, c *cluster, l *load) int {
		ctx := ctxFor(t, time.Minute)
		require.NoError(t, c.nodes[0].DemoteReadOnly(ctx))
		require.NoError(t, c.nodes[1].Promote(ctx))
		runFor(5 * time.Second) // the endpoint keeps pointing at the demoted node
		c.proxy.SetTarget(c.addr(1))
		reachable := time.Now()
		recordRecovery(t, "stale endpoint", l.firstClaimAfter(reachable, 10*time.Second))
		return 1
	})
}

func TestScenarioReversedFailover(t *testing.T) {
	scenario(t, "reversed failover", func(t *testing.T, c *cluster, l *load) int {
		ctx := ctxFor(t, time.Minute)
		require.NoError(t, c.nodes[0].DemoteReadOnly(ctx))
		require.NoError(t, c.nodes[1].Promote(ctx))
		c.proxy.SetTarget(c.addr(1))
		recordRecovery(t, "reversed failover (switch)", l.firstClaimAfter(time.Now(), 10*time.Second))
		runFor(1500 * time.Millisecond) // work is acknowledged on the new writer...
		// ...and then the failover reverses: the old writer is back, without
		// what the other one took in the meantime.
		require.NoError(t, c.nodes[1].DemoteReadOnly(ctx))
		require.NoError(t, c.nodes[0].UndoReadOnly(ctx))
		c.proxy.SetTarget(c.addr(0))
		reachable := time.Now()
		recordRecovery(t, "reversed failover (flip back)", l.firstClaimAfter(reachable, 10*time.Second))
		return 0
	})
}

func TestScenarioSplitBrain(t *testing.T) {
	scenario(t, "split brain window", func(t *testing.T, c *cluster, l *load) int {
		ctx := ctxFor(t, time.Minute)
		require.NoError(t, c.nodes[1].Promote(ctx)) // the old writer stays writable
		c.proxy.SetTarget(c.addr(1))
		reachable := time.Now()
		recordRecovery(t, "split brain window", l.firstClaimAfter(reachable, 10*time.Second))
		// No statement may start on the old writer after it was detected.
		var detected time.Time
		waitFor(t, 5*time.Second, "split brain detection", func() bool {
			for _, e := range c.eventsOf(failover.EventStaleWriter) {
				if e.From.Equal(c.identity(0)) {
					detected = e.At
					return true
				}
			}
			return false
		})
		t.Logf("split brain detected %s after the endpoint moved", detected.Sub(reachable).Round(time.Millisecond))
		runFor(500 * time.Millisecond)
		// A transaction's now() is when the server began it. Work dispatched
		// before detection can begin on the server slightly after it (it was
		// in flight); anything beginning later than inFlight after detection
		// was dispatched after it.
		const inFlight = 250 * time.Millisecond
		old := c.direct(0)
		var late int
		var latest *time.Time
		require.NoError(t, old.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM skiplock.batch_done WHERE done_at > $1) +
			(SELECT count(*) FROM skiplock.batch WHERE created_at > $1 OR attempted_at > $1),
			greatest((SELECT max(done_at) FROM skiplock.batch_done), (SELECT max(greatest(created_at, attempted_at)) FROM skiplock.batch))`,
			detected.Add(inFlight)).Scan(&late, &latest))
		if latest != nil {
			t.Logf("last write on the old writer began %s after detection", latest.Sub(detected).Round(time.Millisecond))
		}
		require.Zero(t, late, "writes began on the old writer after it was detected as stale")
		return 1
	})
}

func TestScenarioBlackhole(t *testing.T) {
	scenario(t, "blackhole", func(t *testing.T, c *cluster, l *load) int {
		c.proxy.Blackhole(true)
		runFor(10 * time.Second)
		c.proxy.Blackhole(false)
		reachable := time.Now()
		recordRecovery(t, "blackhole", l.firstClaimAfter(reachable, 10*time.Second))
		return 0
	})
}

func TestScenarioAdminShutdown(t *testing.T) {
	scenario(t, "admin shutdown", func(t *testing.T, c *cluster, l *load) int {
		ctx := ctxFor(t, time.Minute)
		n, err := c.nodes[0].TerminateBackends(ctx)
		require.NoError(t, err)
		require.Positive(t, n)
		recordRecovery(t, "all backends terminated", l.firstClaimAfter(time.Now(), 10*time.Second))
		runFor(time.Second)
		require.NoError(t, c.nodes[0].Restart(ctx))
		reachable := time.Now()
		recordRecovery(t, "server restarted", l.firstClaimAfter(reachable, 10*time.Second))
		return 0
	})
}

// TestScenarioWorkerCrash kills a worker process (a real child process,
// with SIGKILL) while it holds batches; their leases expire and the other
// workers finish them.
func TestScenarioWorkerCrash(t *testing.T) {
	scenario(t, "worker crash", func(t *testing.T, c *cluster, l *load) int {
		const childLease = 2 * time.Second
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(),
			workerEnv+"=1",
			"SKIPLOCK_WORKER_URL="+c.proxy.ConnString("postgres"),
			"SKIPLOCK_WORKER_LEASE="+childLease.String())
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		cmd.Stderr = os.Stderr
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

		held := make(chan int64, 100)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) == 5 && f[0] == "START" {
					id, _ := strconv.ParseInt(f[1], 10, 64)
					tok, _ := strconv.ParseInt(f[2], 10, 64)
					created, _ := strconv.ParseInt(f[3], 10, 64)
					l.record(batchKey{id, created}, execution{token: tok, at: time.Now(), worker: "child", key: f[4]})
					held <- id
				}
			}
		}()
		var victim int64
		select {
		case victim = <-held:
		case <-time.After(20 * time.Second):
			t.Fatal("the worker process did not start a batch")
		}
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		killed := time.Now()
		_ = cmd.Wait()
		// Its batches are finished by the others once the lease expires.
		waitFor(t, 20*time.Second, "the killed worker's batch to be completed by another", func() bool {
			done, err := l.client.Completed(context.Background(), victim)
			return err == nil && done
		})
		took := time.Since(killed)
		t.Logf("worker crash: batch %d finished by another worker %s after the kill (lease %s)", victim, took.Round(time.Millisecond), childLease)
		require.Less(t, took, childLease+3*time.Second)
		return 0
	})
}

const workerEnv = "SKIPLOCK_FAILOVER_WORKER"

// workerMain is the crash scenario's worker process: it claims batches
// through a failover pool, reports each one on stdout, and never finishes
// them, until it is killed.
func workerMain() int {
	lease, err := time.ParseDuration(os.Getenv("SKIPLOCK_WORKER_LEASE"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(os.Getenv("SKIPLOCK_WORKER_URL"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	pool, err := failover.New(ctx, &failover.Config{PoolConfig: cfg})
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	client, err := queue.New(pool, &queue.Config{Schema: testSchema})
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	var mu sync.Mutex
	r, err := queue.NewRunner(client, &queue.RunnerConfig{
		Queue: loadQueue, Concurrency: 2, LeaseDuration: lease, PollInterval: 50 * time.Millisecond, Owner: "crashing-worker",
		Handler: func(ctx context.Context, b *batch.Batch) error {
			mu.Lock()
			fmt.Printf("START %d %d %d %s\n", b.ID, b.Lease.Token, b.CreatedAt.UnixMicro(), b.IdempotencyKey)
			mu.Unlock()
			<-ctx.Done() // hold the batch until killed
			return ctx.Err()
		},
	})
	if err == nil {
		err = r.Start(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	select {} // until SIGKILL
}

// TestControlPlainPoolStaysBroken runs the stale-endpoint fault against a
// plain pgxpool: its connections to the demoted node keep failing writes
// with 25006 long after the endpoint moved to the new writer. This is the
// failure the failover pool exists for, and proof the scenarios can fail.
func TestControlPlainPoolStaysBroken(t *testing.T) {
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

// TestScenarioRecoverySummary checks the median and maximum recovery time
// across the scenarios above (it runs after them).
func TestScenarioRecoverySummary(t *testing.T) {
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

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	pgtest.WaitFor(t, d, what, cond)
}
