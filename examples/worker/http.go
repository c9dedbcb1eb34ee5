package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/skiplock/skiplock/failover"
)

// readyTimeout bounds the database round trip of one /readyz.
const readyTimeout = time.Second

// sqlWritable asks the writer behind a pooled connection whether it still
// takes writes: between two of the pool's probes a writer can have been
// turned read-only (a switchover) without the pool knowing yet.
const sqlWritable = `SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'`

// writerPool is what /readyz needs from the failover pool.
type writerPool interface {
	Writer() (failover.Identity, bool)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// health answers /healthz and /readyz.
type health struct {
	pool     writerPool
	stopped  <-chan struct{} // closed once the runner has stopped
	started  atomic.Bool     // set once the runner has started
	draining atomic.Bool     // set when a shutdown signal arrived
	log      *zap.Logger
}

// healthz is liveness: the process is up and its runner has not stopped.
// It does not look at the database, so an orchestrator does not restart
// workers for a failover they will ride out on their own.
func (h *health) healthz(w http.ResponseWriter, _ *http.Request) {
	select {
	case <-h.stopped:
		http.Error(w, "runner stopped", http.StatusServiceUnavailable)
	default:
		fmt.Fprintln(w, "ok")
	}
}

// readyz is readiness: the runner is working (not draining or stopped) and
// a verified writer is reachable through the failover pool and still
// writable. During a failover, while no writer exists, or when the database
// is down, it answers 503 with the reason.
func (h *health) readyz(w http.ResponseWriter, r *http.Request) {
	if reason := h.notReady(r.Context()); reason != "" {
		http.Error(w, "not ready: "+reason, http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// notReady returns why the worker is not ready, or "" if it is.
func (h *health) notReady(ctx context.Context) string {
	select {
	case <-h.stopped:
		return "runner stopped"
	default:
	}
	if h.draining.Load() {
		return "draining"
	}
	if !h.started.Load() {
		return "starting"
	}
	writer, ok := h.pool.Writer()
	if !ok {
		return "no verified writer: the pool is looking for one (failover in progress or database down)"
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var writable bool
	if err := h.pool.QueryRow(ctx, sqlWritable).Scan(&writable); err != nil {
		class := failover.Classify(err)
		h.log.Debug("readiness check failed", zap.Stringer("writer", writer), zap.Stringer("class", class), zap.Error(err))
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Sprintf("writer %s did not answer within %s", writer, readyTimeout)
		}
		return fmt.Sprintf("writer %s unreachable (%s)", writer, class)
	}
	if !writable {
		return fmt.Sprintf("writer %s no longer takes writes", writer)
	}
	return ""
}

// newHTTPServer serves /healthz, /readyz and /metrics on addr.
func newHTTPServer(addr string, h *health, metrics http.Handler) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", h.healthz)
	mux.HandleFunc("GET /readyz", h.readyz)
	mux.Handle("GET /metrics", metrics)
	return &http.Server{
		Addr:              addr,
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
	}
}
