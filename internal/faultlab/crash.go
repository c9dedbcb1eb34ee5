package faultlab

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/queue"
)

// The worker-crash fault re-executes the running binary (a test binary or the bench) with
// CrashWorkerEnv set; its main (or TestMain) then calls CrashWorkerMain before anything else.
const (
	CrashWorkerEnv = "SKIPLOCK_FAULTLAB_CRASH_WORKER"
	crashURLEnv    = "SKIPLOCK_FAULTLAB_CRASH_URL"
	crashSchemaEnv = "SKIPLOCK_FAULTLAB_CRASH_SCHEMA"
	crashQueueEnv  = "SKIPLOCK_FAULTLAB_CRASH_QUEUE"
	crashLeaseEnv  = "SKIPLOCK_FAULTLAB_CRASH_LEASE"
	// CrashLease is the crashing worker's lease: how long its batches wait after the kill.
	CrashLease = 2 * time.Second
)

// IsCrashWorker reports whether this process was started as the crash fault's worker.
func IsCrashWorker() bool { return os.Getenv(CrashWorkerEnv) == "1" }

// CrashWorkerMain is the crash fault's worker process: it claims batches through a failover
// pool on the endpoint, reports each on stdout and never finishes them, until it is killed.
// It returns only on a setup error (the exit code).
func CrashWorkerMain() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "faultlab crash worker:", err)
		return 2
	}
	lease, err := time.ParseDuration(os.Getenv(crashLeaseEnv))
	if err != nil {
		return fail(err)
	}
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(os.Getenv(crashURLEnv))
	if err != nil {
		return fail(fmt.Errorf("parse the endpoint's connection string: %w", err))
	}
	pool, err := failover.New(ctx, &failover.Config{PoolConfig: cfg})
	if err != nil {
		return fail(err)
	}
	client, err := queue.New(pool, &queue.Config{Schema: os.Getenv(crashSchemaEnv)})
	if err != nil {
		return fail(err)
	}
	var mu sync.Mutex
	r, err := queue.NewRunner(client, &queue.RunnerConfig{
		Queue: os.Getenv(crashQueueEnv), Concurrency: 2, LeaseDuration: lease, PollInterval: 50 * time.Millisecond, Owner: "crashing-worker",
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
		return fail(err)
	}
	select {} // until SIGKILL
}

// CrashWorker starts a worker process on the endpoint, SIGKILLs it once it holds a batch, and
// waits until another worker of the load completed that batch (its lease, CrashLease, has to
// expire first). It returns how long after the kill that was. The worker's executions are
// recorded in the load (ending at the kill). A worker that exits before it holds a batch (its
// runner fails fast while a failover is under way) is started again, for at most 30 s.
func CrashWorker(ctx context.Context, c *Cluster, l *Load) (time.Duration, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		took, started, err := crashOnce(ctx, c, l, time.Until(deadline))
		if started || time.Now().After(deadline) || ctx.Err() != nil {
			return took, err
		}
		if err := pause(ctx, 500*time.Millisecond); err != nil {
			return 0, err
		}
	}
}

// crashOnce is one worker process; started reports whether it got to hold a batch.
func crashOnce(ctx context.Context, c *Cluster, l *Load, within time.Duration) (took time.Duration, started bool, err error) {
	self, err := os.Executable()
	if err != nil {
		return 0, true, err
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), CrashWorkerEnv+"=1",
		crashURLEnv+"="+c.Proxy.ConnString("postgres"),
		crashSchemaEnv+"="+l.cfg.Schema,
		crashQueueEnv+"="+l.cfg.Queue,
		crashLeaseEnv+"="+CrashLease.String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlives us
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, true, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, true, err
	}
	var (
		mu   sync.Mutex
		held []*Execution
	)
	first := make(chan string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 5 || f[0] != "START" {
				continue
			}
			id, _ := strconv.ParseInt(f[1], 10, 64)
			tok, _ := strconv.ParseInt(f[2], 10, 64)
			created, _ := strconv.ParseInt(f[3], 10, 64)
			e := &Execution{BatchID: id, Created: created, Key: f[4], Token: tok, Runner: "crashing-worker", Start: time.Now()}
			l.Record(e)
			mu.Lock()
			held = append(held, e)
			mu.Unlock()
			select {
			case first <- e.Key:
			default:
			}
		}
	}()
	kill := func() time.Time {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		at := time.Now()
		_ = cmd.Wait()
		<-scanned
		mu.Lock()
		for _, e := range held {
			l.SetEnd(e, at)
		}
		mu.Unlock()
		return at
	}
	var victim string // by key: a commit loss meanwhile can renumber batches
	t := time.NewTimer(max(within, time.Second))
	defer t.Stop()
	select {
	case victim = <-first:
	case <-scanned: // exited on its own, before holding a batch
		kill()
		return 0, false, fmt.Errorf("faultlab: the crash worker exited before it held a batch")
	case <-t.C:
		kill()
		return 0, true, fmt.Errorf("faultlab: the crash worker did not start a batch within 30s")
	case <-ctx.Done():
		kill()
		return 0, true, ctx.Err()
	}
	killed := kill()
	q := `SELECT EXISTS (SELECT 1 FROM ` + l.table("batch_key_digest") + ` k JOIN ` + l.table("batch_done") + ` d ON d.id = k.batch_id
		WHERE k.digest = ` + l.table("key_digest") + `($1, $2))`
	err = poll(ctx, 30*time.Second, "the killed worker's batch to be completed by another", func() (bool, error) {
		var done bool
		err := c.Direct(c.Writer()).QueryRow(ctx, q, l.cfg.Queue, victim).Scan(&done)
		return err == nil && done, nil // the writer may be changing; the deadline bounds it
	})
	return time.Since(killed), true, err
}
