// Command worker is a skiplock worker you can copy as it is: it works one
// queue with a queue.Runner on the failover package's writer-verified pool,
// drains gracefully on SIGTERM or SIGINT, and serves /healthz, /readyz and
// /metrics for an orchestrator and Prometheus.
//
// Configuration comes from flags, each falling back to an environment
// variable (run it with -h for the list):
//
//	DATABASE_URL=postgres://app@db.example:5432/app SKIPLOCK_QUEUE=clicks worker -migrate
//
// The batch handler in handler.go is an example that only logs each batch:
// replace it with your delivery.
//
// On the first SIGTERM or SIGINT the worker stops claiming, reports not
// ready, and lets running handlers finish for up to -drain-timeout; then it
// cancels the rest and releases their batches so other workers take them at
// once. A second signal cancels the running handlers right away. The exit
// status is 0 after a clean drain, 1 when handlers had to be cut short or
// something failed, and 2 for a bad configuration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1 // could not start, or the drain was not clean
	exitUsage   = 2 // bad configuration
)

// httpShutdownTimeout bounds the HTTP server's shutdown at exit.
const httpShutdownTimeout = 5 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stderr))
}

// run is the whole program; it returns the exit status.
func run(args []string, getenv func(string) string, stderr io.Writer) int {
	cfg, err := parseConfig(args, getenv, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case err != nil:
		fmt.Fprintf(stderr, "worker: %v\n", err)
		return exitUsage
	}
	pcfg, err := cfg.poolConfig()
	if err != nil {
		fmt.Fprintf(stderr, "worker: %v\n", err)
		return exitUsage
	}

	// zap's production logger (JSON on stderr), without its sampling: the
	// example handler logs every batch, and a sampled log would drop some.
	// A handler that logs more than a few hundred lines a second should log
	// less, not lose lines at random.
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(cfg.logLevel)
	zc.Sampling = nil
	log, err := zc.Build()
	if err != nil {
		fmt.Fprintf(stderr, "worker: logger: %v\n", err)
		return exitFailure
	}
	defer func() { _ = log.Sync() }()

	owner := cfg.owner
	if owner == "" {
		owner = ownerDefault()
	}
	cc := pcfg.ConnConfig
	log.Info("worker starting",
		zap.String("queue", cfg.queue), zap.String("schema", cfg.schema),
		zap.Int("concurrency", cfg.concurrency), zap.Duration("lease", cfg.lease),
		zap.Duration("drain_timeout", cfg.drainTimeout), zap.String("owner", owner),
		// Where the database is, never its password.
		zap.String("db_host", cc.Host), zap.Uint16("db_port", cc.Port),
		zap.String("db_name", cc.Database), zap.String("db_user", cc.User))

	ctx, stopSignals := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stopSignals()

	w, code := start(ctx, cfg, pcfg, owner, log)
	if w == nil {
		return code
	}

	select {
	case <-ctx.Done():
		log.Info("shutdown signal received: draining", zap.Duration("drain_timeout", cfg.drainTimeout))
	case err := <-w.httpErr:
		log.Error("HTTP server failed; stopping", zap.Error(err))
		code = exitFailure
	}
	// A second signal hurries the drain; until it comes, signals no longer
	// end the process with their default action.
	hurry := make(chan os.Signal, 1)
	signal.Notify(hurry, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(hurry)
	stopSignals()

	if !w.drain(cfg.drainTimeout, hurry) {
		code = exitFailure
	}
	if !w.close() {
		code = exitFailure
	}
	if code == exitOK {
		log.Info("worker stopped cleanly")
	}
	return code
}

// worker holds what start built, for the drain and the close.
type worker struct {
	log     *zap.Logger
	pool    *failover.Pool
	client  *queue.Client
	runner  *queue.Runner
	health  *health
	srv     *http.Server
	httpErr chan error
}

// start connects, migrates if asked, and starts the HTTP server and the
// runner. On failure it closes what it opened and returns nil and the exit
// status.
func start(ctx context.Context, cfg *config, pcfg *pgxpool.Config, owner string, log *zap.Logger) (w *worker, code int) {
	w = &worker{log: log, httpErr: make(chan error, 1)}
	defer func() {
		if code != exitOK {
			_ = w.close()
			w = nil
		}
	}()
	startCtx, cancel := context.WithTimeout(ctx, cfg.startTimeout)
	defer cancel()

	// The metrics come first: their hooks go into the pool, the client
	// and the runner as these are built.
	metrics, onPoolEvent, metricsHandler, err := newMetrics(cfg.statsInterval, log)
	if err != nil {
		log.Error("metrics", zap.Error(err))
		return w, exitUsage
	}
	pool, err := failover.New(startCtx, &failover.Config{
		PoolConfig:    pcfg,
		Logger:        log,
		OnEvent:       onPoolEvent,
		ProbeInterval: cfg.probeInterval,
	})
	if err != nil {
		log.Error("no writer reachable through the database endpoint", zap.Duration("waited_up_to", cfg.startTimeout), zap.Error(err))
		return w, exitFailure
	}
	w.pool = pool
	metrics.SetPool(pool)
	if writer, ok := pool.Writer(); ok {
		log.Info("connected to the writer", zap.Stringer("writer", writer))
	}

	if cfg.migrate {
		m, err := migrations.New(pool, &migrations.Config{Schema: cfg.schema})
		if err != nil {
			log.Error("migrations", zap.Error(err))
			return w, exitUsage
		}
		res, err := m.Up(startCtx)
		if err != nil {
			log.Error("migrations failed", zap.Error(err))
			return w, exitFailure
		}
		log.Info("schema migrated", zap.Int("version", res.Version), zap.Ints("applied", res.Applied))
	}

	client, err := queue.New(pool, &queue.Config{Schema: cfg.schema, Logger: log, OnEvent: metrics.QueueEvents(nil)})
	if err != nil {
		log.Error("queue client", zap.Error(err))
		return w, usageOr(err)
	}
	w.client = client
	metrics.SetClient(client)
	runner, err := queue.NewRunner(client, &queue.RunnerConfig{
		Queue:         cfg.queue,
		Handler:       exampleHandler(log, cfg.handlerDuration),
		Concurrency:   cfg.concurrency,
		LeaseDuration: cfg.lease,
		PollInterval:  cfg.pollInterval,
		Owner:         owner,
		Middleware:    []queue.MiddlewareFunc{metrics.Middleware},
	})
	if err != nil {
		log.Error("runner", zap.Error(err))
		return w, usageOr(err)
	}
	w.runner = runner
	metrics.AddRunner(runner)
	w.health = &health{pool: pool, stopped: runner.Stopped(), log: log.Named("health")}

	if cfg.httpAddr != "" {
		ln, err := net.Listen("tcp", cfg.httpAddr)
		if err != nil {
			log.Error("HTTP listen", zap.String("addr", cfg.httpAddr), zap.Error(err))
			return w, exitFailure
		}
		w.srv = newHTTPServer(cfg.httpAddr, w.health, metricsHandler)
		log.Info("HTTP listening", zap.String("addr", ln.Addr().String()))
		go func() {
			if err := w.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				w.httpErr <- err
			}
		}()
	}

	if err := runner.Start(startCtx); err != nil {
		log.Error("runner could not start", zap.Error(err))
		return w, exitFailure
	}
	w.health.started.Store(true)
	return w, exitOK
}

// usageOr returns exitUsage for an argument error of the queue package
// (a configuration the queue refuses) and exitFailure for anything else.
func usageOr(err error) int {
	if errors.Is(err, queue.ErrInvalid) {
		return exitUsage
	}
	return exitFailure
}

// drain stops the runner: claims stop at once, running handlers get until
// timeout (or until a signal on hurry) to finish, the rest are cancelled and
// their batches released. It reports whether the drain was clean: every
// handler finished on its own and every outcome was acknowledged.
func (w *worker) drain(timeout time.Duration, hurry <-chan os.Signal) bool {
	w.health.draining.Store(true)
	t0 := time.Now()
	releasedBefore := w.runner.Stats().Released
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	hurried := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		select {
		case sig := <-hurry:
			close(hurried)
			w.log.Warn("second signal: cancelling running handlers now", zap.Stringer("signal", sig))
			_ = w.runner.StopAndCancel(ctx)
		case <-stopped:
		}
	}()
	err := w.runner.Stop(ctx)
	close(stopped)

	st := w.runner.Stats()
	released := st.Released - releasedBefore
	clean := err == nil && released == 0
	select {
	case <-hurried:
		clean = false
	default:
	}
	fields := []zap.Field{zap.Duration("took", time.Since(t0)), zap.Int64("completed", st.Completed),
		zap.Int64("released_at_stop", released), zap.Int("still_running", st.Running)}
	if clean {
		w.log.Info("runner drained", fields...)
	} else {
		w.log.Error("drain not clean: handlers were cut short and their batches released, or outcomes were left to lease expiry",
			append(fields, zap.Error(err))...)
	}
	return clean
}

// close releases everything start opened, in reverse order: the HTTP
// server, the client (which asserts journaled work a writer change left
// pending), the pool. It reports whether the client closed cleanly: if
// not, work acknowledged before a writer change may not be on the current
// writer (see queue.Client.Close).
func (w *worker) close() bool {
	ok := true
	if w.runner != nil {
		// Stop after a drain, or after a failed Start, returns at once.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = w.runner.Stop(ctx)
		cancel()
	}
	if w.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), httpShutdownTimeout)
		if err := w.srv.Shutdown(ctx); err != nil {
			w.log.Warn("HTTP shutdown", zap.Error(err))
		}
		cancel()
	}
	if w.client != nil {
		if err := w.client.Close(); err != nil {
			w.log.Error("closing the queue client", zap.Error(err))
			ok = false
		}
	}
	if w.pool != nil {
		w.pool.Close()
	}
	return ok
}
