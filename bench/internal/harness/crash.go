package harness

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

// The worker-crash fault re-executes this binary as a worker process
// (CrashWorkerEnv set), which claims batches, reports each on stdout and
// never finishes them, until it is killed.
const (
	CrashWorkerEnv = "SKIPLOCK_BENCH_CRASH_WORKER"
	crashURLEnv    = "SKIPLOCK_BENCH_CRASH_URL"
	crashLease     = 2 * time.Second
)

// IsCrashWorker reports whether this process was started as the
// worker-crash fault's worker; main then calls CrashWorkerMain.
func IsCrashWorker() bool { return os.Getenv(CrashWorkerEnv) == "1" }

// CrashWorkerMain is the crash fault's worker process. It returns only on
// a setup error (the exit code); otherwise it runs until killed.
func CrashWorkerMain() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "crash worker:", err)
		return 2
	}
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(os.Getenv(crashURLEnv))
	if err != nil {
		return fail(err)
	}
	pool, err := failover.New(ctx, &failover.Config{PoolConfig: cfg})
	if err != nil {
		return fail(err)
	}
	client, err := queue.New(pool, &queue.Config{Schema: foSchema})
	if err != nil {
		return fail(err)
	}
	var mu sync.Mutex
	r, err := queue.NewRunner(client, &queue.RunnerConfig{
		Queue: foQueue, Concurrency: 2, LeaseDuration: crashLease, PollInterval: 50 * time.Millisecond, Owner: "crashing-worker",
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

// workerCrash starts a worker process, kills it (SIGKILL) once it holds a
// batch, and measures how long after the kill another worker completed
// that batch (its lease, crashLease, has to expire first).
func workerCrash(ctx context.Context, c *foCluster, l *foLoad) (faultRun, error) {
	r := faultRun{final: 0, recoveries: map[string]time.Duration{}, extra: map[string]time.Duration{}}
	self, err := os.Executable()
	if err != nil {
		return r, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), CrashWorkerEnv+"=1", crashURLEnv+"="+c.proxy.ConnString("postgres"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlives the harness
	out, err := cmd.StdoutPipe()
	if err != nil {
		return r, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return r, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	held := make(chan int64, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 5 || f[0] != "START" {
				continue
			}
			id, _ := strconv.ParseInt(f[1], 10, 64)
			tok, _ := strconv.ParseInt(f[2], 10, 64)
			created, _ := strconv.ParseInt(f[3], 10, 64)
			l.record(batchID{id, created}, execution{token: tok, at: time.Now(), key: f[4]})
			select {
			case held <- id:
			default:
			}
		}
	}()
	var victim int64
	select {
	case victim = <-held:
	case <-time.After(20 * time.Second):
		return r, fmt.Errorf("the worker process did not start a batch")
	case <-ctx.Done():
		return r, ctx.Err()
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return r, err
	}
	killed := time.Now()
	_ = cmd.Wait()
	err = pollUntil(ctx, 20*time.Second, "the killed worker's batch to be completed by another", func() (bool, error) {
		done, err := l.client.Completed(ctx, victim)
		return done, err
	})
	r.extra["crash_takeover"] = time.Since(killed)
	return r, err
}
