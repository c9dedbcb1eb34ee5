package queue

import (
	"context"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/skiplock/skiplock/batch"
)

// HandlerFunc delivers one batch. Returning nil completes the batch; an
// error fails the attempt (retried later, or dead-lettered after the last
// attempt or at once when wrapped with Permanent); a panic counts as an
// error. ctx is cancelled when the runner is stopped with StopAndCancel,
// when a graceful Stop runs out of time, and before the batch's lease
// expires if it could not be renewed, and when it runs longer than its
// timeout (RunnerConfig.HandlerTimeout); context.Cause(ctx) is then
// ErrShutdown, ErrLeaseNotRenewed, ErrLeaseLost or ErrHandlerTimeout. A
// handler that returns an error after such a cancellation has its batch
// released (not failed, the attempt is given back) — except after its
// timeout: then the attempt fails. A handler that calls runtime.Goexit
// fails its attempt (ErrHandlerGoexit). A handler that does not return
// within RunnerConfig.HandlerGrace after a cancellation other than shutdown
// is abandoned (ErrHandlerAbandoned). The returned error's methods are not
// trusted: see Failure.Err.
type HandlerFunc func(ctx context.Context, b *batch.Batch) error

// Defaults of RunnerConfig.
const (
	ConcurrencyDefault     = 16
	MaxConcurrency         = 10000
	LeaseDurationDefault   = 30 * time.Second
	PollIntervalDefault    = time.Second
	ReclaimIntervalDefault = 2 * time.Second
	PruneIntervalDefault   = 5 * time.Minute
	VacuumIntervalDefault  = 2 * time.Second
	HandlerTimeoutDefault  = 30 * time.Minute
)

// RunnerConfig configures a Runner.
type RunnerConfig struct {
	// Queue to work. Required.
	Queue string

	// Handler delivers each batch. Required.
	Handler HandlerFunc

	// Middleware wraps Handler, the first element outermost (see
	// MiddlewareFunc): each is called once, by NewRunner, and what it
	// returns runs for every batch inside the runner's protection against
	// panics, runtime.Goexit and handlers that never return. Defaults to
	// none.
	Middleware []MiddlewareFunc

	// Concurrency is the runner's handler slots: the most handlers running
	// at once, and the most batches it holds, 1..MaxConcurrency. The runner
	// claims only for free slots, so a batch never waits in a runner for a
	// handler while another runner could take it. Defaults to
	// ConcurrencyDefault.
	Concurrency int

	// ClaimSize is the most batches one claim round trip takes,
	// 1..MaxClaimSize. A claim asks for as many batches as there are free
	// handler slots, capped at ClaimSize. While handlers run, the runner
	// claims again once at least half of min(ClaimSize, Concurrency) slots
	// are free (at once when all are), so claims stay large under load;
	// outcomes are acknowledged in the meantime. Defaults to Concurrency,
	// capped at MaxClaimSize, so that one round trip can fill every free
	// slot.
	ClaimSize int

	// LeaseDuration is how long a claim holds a batch without renewal,
	// MinLeaseDuration..MaxLeaseDuration. Defaults to LeaseDurationDefault.
	LeaseDuration time.Duration

	// HeartbeatInterval is how often the leases of running batches are
	// renewed, in one statement for all of them. Defaults to a quarter of
	// LeaseDuration; must leave at least FenceMargin before expiry.
	HeartbeatInterval time.Duration

	// FenceMargin is how long before a lease would expire without renewal
	// the handler's context is cancelled (self-fencing). Two handlers of one
	// batch can only overlap if a handler keeps running past that
	// cancellation. Defaults to a fifth of LeaseDuration.
	FenceMargin time.Duration

	// PollInterval is how often the runner looks for work when no wake-up
	// arrives. NOTIFY wake-ups make new work start at once; polling is the
	// fallback. Defaults to PollIntervalDefault.
	PollInterval time.Duration

	// ReclaimInterval is how often the runner makes batches of its queue
	// whose lease expired (a crashed worker) claimable again. Defaults to
	// ReclaimIntervalDefault.
	ReclaimInterval time.Duration

	// PruneInterval is how often the runner deletes expired completion
	// records and idempotency keys (Client.Prune). Negative disables it.
	// Defaults to PruneIntervalDefault.
	PruneInterval time.Duration

	// VacuumInterval is how often the hot table is vacuumed while this
	// runner works (by whichever process gets there first; see
	// Client.Vacuum). Negative disables it, leaving the table to autovacuum.
	// Defaults to VacuumIntervalDefault.
	VacuumInterval time.Duration

	// HandlerTimeout is how long a handler may run before its context is
	// cancelled with cause ErrHandlerTimeout. The attempt then fails (it is
	// not released, even if the runner is stopping), so a batch whose
	// handler always hangs is dead-lettered after MaxAttempts, across
	// restarts of its workers. Negative means no timeout: heartbeats then
	// renew a running handler's lease for as long as it runs. Defaults to
	// HandlerTimeoutDefault.
	HandlerTimeout time.Duration

	// HandlerTimeoutFunc, if set, gives the timeout of one batch's handler
	// (for example from its Meta or its queue's needs): a positive result
	// is used, a negative one means no timeout, zero means HandlerTimeout.
	// It is called on the handler's goroutine just before the handler, so
	// it must be quick; a panic in it fails the attempt like a handler
	// panic.
	HandlerTimeoutFunc func(b *batch.Batch) time.Duration

	// HandlerGrace is how long a handler may take to return after the
	// runner cancelled its context for its timeout, a lease not renewed in
	// time or a lost lease. After it the handler is abandoned: its attempt
	// is failed (released if the cause was not its timeout; a lost lease
	// makes that a lease-lost outcome), its lease no longer renewed, its
	// slot counted in RunnerStats.Abandoned and given to a new worker, so
	// the runner keeps Concurrency handlers running. The abandoned
	// goroutine is left to end on its own and its result is ignored.
	// Cancellation at shutdown is bounded by Stop's context instead.
	// 1ms..MaxLeaseDuration. Defaults to FenceMargin, so a handler
	// cancelled at its fence is abandoned about when its lease expires.
	HandlerGrace time.Duration

	// Owner is recorded with each lease. Defaults to "<hostname>/<pid>".
	Owner string

	// Logger defaults to the Client's logger.
	Logger *zap.Logger
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c *RunnerConfig) WithDefaults() *RunnerConfig {
	out := RunnerConfig{}
	if c != nil {
		out = *c
	}
	if out.Concurrency == 0 {
		out.Concurrency = ConcurrencyDefault
	}
	if out.ClaimSize == 0 {
		out.ClaimSize = min(out.Concurrency, MaxClaimSize)
	}
	if out.LeaseDuration == 0 {
		out.LeaseDuration = LeaseDurationDefault
	}
	if out.HeartbeatInterval == 0 {
		out.HeartbeatInterval = out.LeaseDuration / 4
	}
	if out.FenceMargin == 0 {
		out.FenceMargin = out.LeaseDuration / 5
	}
	if out.PollInterval == 0 {
		out.PollInterval = PollIntervalDefault
	}
	if out.ReclaimInterval == 0 {
		out.ReclaimInterval = ReclaimIntervalDefault
	}
	if out.PruneInterval == 0 {
		out.PruneInterval = PruneIntervalDefault
	}
	if out.VacuumInterval == 0 {
		out.VacuumInterval = VacuumIntervalDefault
	}
	if out.Owner == "" {
		out.Owner = defaultOwner
	}
	if out.HandlerTimeout == 0 {
		out.HandlerTimeout = HandlerTimeoutDefault
	}
	if out.HandlerGrace == 0 {
		out.HandlerGrace = out.FenceMargin
	}
	return &out
}

func (c *RunnerConfig) validate() error {
	const op = "runner config"
	if err := batch.ValidateQueueName(c.Queue); err != nil {
		return &ArgumentError{Op: op, Field: "Queue", Reason: err.Error(), Err: err}
	}
	switch {
	case c.Handler == nil:
		return argError(op, "Handler", "nil")
	case c.Concurrency < 1 || c.Concurrency > MaxConcurrency:
		return argError(op, "Concurrency", "%d is outside 1..%d", c.Concurrency, MaxConcurrency)
	case c.ClaimSize < 1 || c.ClaimSize > MaxClaimSize:
		return argError(op, "ClaimSize", "%d is outside 1..%d", c.ClaimSize, MaxClaimSize)
	}
	if err := validateLease(op, "LeaseDuration", c.LeaseDuration); err != nil {
		return err
	}
	switch {
	case c.FenceMargin <= 0 || c.FenceMargin >= c.LeaseDuration/2:
		return argError(op, "FenceMargin", "%s must be positive and below half of LeaseDuration %s", c.FenceMargin, c.LeaseDuration)
	case c.HeartbeatInterval < 10*time.Millisecond || c.HeartbeatInterval > c.LeaseDuration-c.FenceMargin:
		return argError(op, "HeartbeatInterval", "%s must be between 10ms and LeaseDuration-FenceMargin (%s)", c.HeartbeatInterval, c.LeaseDuration-c.FenceMargin)
	case c.PollInterval < time.Millisecond:
		return argError(op, "PollInterval", "%s is below 1ms", c.PollInterval)
	case c.ReclaimInterval < 10*time.Millisecond:
		return argError(op, "ReclaimInterval", "%s is below 10ms", c.ReclaimInterval)
	case c.VacuumInterval > 0 && c.VacuumInterval < 100*time.Millisecond:
		return argError(op, "VacuumInterval", "%s is below 100ms", c.VacuumInterval)
	case c.PruneInterval > 0 && c.PruneInterval < time.Second:
		return argError(op, "PruneInterval", "%s is below 1s", c.PruneInterval)
	case c.HandlerGrace < time.Millisecond || c.HandlerGrace > MaxLeaseDuration:
		return argError(op, "HandlerGrace", "%s is outside 1ms..%s", c.HandlerGrace, MaxLeaseDuration)
	case len(c.Owner) > MaxOwnerBytes || containsNUL(c.Owner) || !utf8.ValidString(c.Owner):
		return argError(op, "Owner", "longer than %d bytes, or not valid UTF-8, or contains NUL", MaxOwnerBytes)
	}
	return nil
}
