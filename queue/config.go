package queue

import (
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/skiplock/skiplock/internal/sqlident"
)

// Defaults of Config.
const (
	// SchemaDefault matches the migrations package's default schema.
	SchemaDefault         = "skiplock"
	MaxAttemptsDefault    = 10
	RetryBaseDefault      = time.Second
	RetryMaxDefault       = 10 * time.Minute
	OpTimeoutDefault      = 30 * time.Second
	DoneRetentionDefault  = 24 * time.Hour
	KeyRetentionDefault   = 7 * 24 * time.Hour
	RetryWindowDefault    = 30 * time.Second
	JournalWindowDefault  = 30 * time.Second
	NotifyIntervalDefault = 20 * time.Millisecond
	PruneDutyDefault      = 0.25
	EventBufferDefault    = 4096
	MaxAttemptsLimit      = 1000
	MaxEnqueueBatchRows   = 5000 // rows per statement of the bulk path; larger calls are split inside one transaction
)

// NoRetry, as Config.RetryWindow, turns retries off: every operation makes
// one attempt and returns its error. Any negative RetryWindow does the same.
const NoRetry time.Duration = -1

// NotifyInTransaction, as Config.NotifyInterval, makes every enqueue
// statement send its own NOTIFY (the behaviour before coalescing); see
// Config.NotifyInterval. Any negative NotifyInterval does the same.
const NotifyInTransaction time.Duration = -1

// Config configures a Client. A nil *Config means all defaults.
type Config struct {
	// Schema holds skiplock's tables, as installed by the migrations
	// package. Defaults to SchemaDefault.
	Schema string

	// Logger receives the client's and its runners' logs, named "skiplock".
	// Defaults to zap.NewNop().
	Logger *zap.Logger

	// MaxAttempts is the number of claims a batch gets before it is
	// dead-lettered, unless its enqueue sets its own. Defaults to
	// MaxAttemptsDefault; at most MaxAttemptsLimit.
	MaxAttempts int

	// RetryBase is the delay before the first retry of a failed batch. Each
	// further attempt doubles it, up to RetryMax; the actual delay is drawn
	// uniformly from [d/2, d] (jitter) by the database. Defaults to
	// RetryBaseDefault.
	RetryBase time.Duration

	// RetryMax caps the retry delay. Defaults to RetryMaxDefault.
	RetryMax time.Duration

	// OpTimeout bounds each database round trip the client makes on behalf
	// of a caller, in addition to the caller's context, so a connection that
	// stops answering becomes an error instead of a hang. Defaults to
	// OpTimeoutDefault.
	OpTimeout time.Duration

	// DoneRetention is how long completion records are kept. Within it, a
	// repeated Complete with the token that completed a batch succeeds;
	// afterwards it reports ErrLeaseLost. Defaults to DoneRetentionDefault.
	DoneRetention time.Duration

	// KeyRetention is how long idempotency keys are remembered after their
	// enqueue. Within it, enqueueing the same key again adds nothing, even
	// after the first batch completed. Defaults to KeyRetentionDefault.
	KeyRetention time.Duration

	// PruneDuty is the share of its running time that Prune spends deleting:
	// after each chunk of expired rows it waits (1/PruneDuty - 1) times as
	// long as the chunk took, so that clearing a large heap of expired keys
	// (a day's worth, after pruning was off) slows enqueues and claims by
	// a bounded amount instead of taking the server for seconds. 1 deletes
	// chunk after chunk without waiting. Must be in (0, 1]. Defaults to
	// PruneDutyDefault.
	PruneDuty float64

	// RetryWindow bounds how long an operation keeps retrying after errors
	// that say the database may be failing over (read-only writer,
	// connection lost, no writer yet). Only operations that are safe to
	// repeat are retried: claims, fenced acknowledgements, enqueues whose
	// batches all have idempotency keys, and the administrative calls that
	// are (Get, Completed, ListDead, Pause, Resume, Paused, Stats, Prune,
	// Vacuum; RequeueDead is repeated only after failures that prove it
	// committed nothing). NoRetry (or any negative value) turns retries off:
	// one attempt, its error returned as it is. Close then gives its
	// re-assertion of journaled enqueues OpTimeout. Defaults to
	// RetryWindowDefault.
	RetryWindow time.Duration

	// JournalWindow is how far back, from the last acknowledgement a writer
	// gave, the client re-asserts its acknowledged keyed enqueues, and
	// runners their acknowledged completions, on the next writer after a
	// failover: with asynchronous replication a promoted replica can miss the
	// last commits of the old writer. The window is measured from the newest
	// acknowledgement, not from when the change is detected, so slow
	// detection (an endpoint that moves 60 s later) loses nothing; it must
	// cover the replication lag at the moment of failure plus any time the
	// old writer kept acknowledging writes after the replica was promoted
	// (a split brain that the endpoint still routes to). What a change
	// leaves to re-assert is retried until it succeeds or the client closes
	// (see JournalStats, Client.Close). Re-asserting what the new writer
	// already has adds nothing. It needs a DB that reports writer changes
	// (the failover package's Pool). Negative disables it. Defaults to
	// JournalWindowDefault.
	JournalWindow time.Duration

	// DisableNotify stops enqueues from sending NOTIFY wake-ups; runners then
	// find new batches by polling only. Defaults to false.
	DisableNotify bool

	// NotifyInterval coalesces the NOTIFY wake-ups of enqueues made outside
	// a caller's transaction: after an enqueue commits, the client wakes the
	// queue's runners at once if it has not done so within the last
	// NotifyInterval, and otherwise once at the end of that interval,
	// however many enqueues came meanwhile; the wake-up is its own small
	// statement. A NOTIFY inside an enqueue's transaction would take
	// PostgreSQL's global notification lock at every commit and serialize
	// concurrent enqueues. Enqueues inside the caller's transaction
	// (EnqueueTx, EnqueueManyTx) still notify inside it, so that runners
	// wake only if it commits. NotifyInTransaction (or any negative value)
	// notifies inside every enqueue statement instead. Defaults to
	// NotifyIntervalDefault.
	NotifyInterval time.Duration

	// OnEvent, if set, receives the lifecycle events of the client and its
	// runners (see EventKind), one event per kind per round trip. It is
	// untrusted: it runs on a goroutine of its own, fed through a buffer of
	// EventBuffer events, so a slow, blocked, panicking or Goexit-calling
	// callback never slows or stops a claim loop, a handler or an enqueue;
	// events that find the buffer full are dropped and counted
	// (Client.EventStats). A panic or runtime.Goexit in it drops that event
	// and is counted; the delivery goes on. Close delivers what is buffered
	// and waits for the callback at most 250ms. Unset, no event is built and
	// no goroutine started. Defaults to nil.
	OnEvent OnEventFunc

	// EventBuffer is how many events wait for OnEvent at most, 1..1<<20.
	// Defaults to EventBufferDefault.
	EventBuffer int
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c *Config) WithDefaults() *Config {
	out := Config{}
	if c != nil {
		out = *c
	}
	if out.Schema == "" {
		out.Schema = SchemaDefault
	}
	if out.Logger == nil {
		out.Logger = zap.NewNop()
	}
	if out.MaxAttempts == 0 {
		out.MaxAttempts = MaxAttemptsDefault
	}
	if out.RetryBase == 0 {
		out.RetryBase = RetryBaseDefault
	}
	if out.RetryMax == 0 {
		out.RetryMax = RetryMaxDefault
	}
	if out.OpTimeout == 0 {
		out.OpTimeout = OpTimeoutDefault
	}
	if out.DoneRetention == 0 {
		out.DoneRetention = DoneRetentionDefault
	}
	if out.RetryWindow == 0 {
		out.RetryWindow = RetryWindowDefault
	}
	if out.JournalWindow == 0 {
		out.JournalWindow = JournalWindowDefault
	}
	if out.KeyRetention == 0 {
		out.KeyRetention = KeyRetentionDefault
	}
	if out.NotifyInterval == 0 {
		out.NotifyInterval = NotifyIntervalDefault
	}
	if out.PruneDuty == 0 {
		out.PruneDuty = PruneDutyDefault
	}
	if out.EventBuffer == 0 {
		out.EventBuffer = EventBufferDefault
	}
	return &out
}

func (c *Config) validate() error {
	if _, err := sqlident.Schema(c.Schema); err != nil {
		return &ArgumentError{Op: "config", Field: "Schema", Reason: fmt.Sprintf("%q: %v", short(c.Schema), err), Err: err}
	}
	switch {
	case c.MaxAttempts < 1 || c.MaxAttempts > MaxAttemptsLimit:
		return argError("config", "MaxAttempts", "%d is outside 1..%d", c.MaxAttempts, MaxAttemptsLimit)
	case c.RetryBase < time.Millisecond:
		return argError("config", "RetryBase", "%s is below 1ms", c.RetryBase)
	case c.RetryMax < c.RetryBase:
		return argError("config", "RetryMax", "%s is below RetryBase %s", c.RetryMax, c.RetryBase)
	case c.OpTimeout < 100*time.Millisecond:
		return argError("config", "OpTimeout", "%s is below 100ms", c.OpTimeout)
	case c.DoneRetention < time.Minute:
		return argError("config", "DoneRetention", "%s is below 1m", c.DoneRetention)
	case c.NotifyInterval > time.Second:
		return argError("config", "NotifyInterval", "%s is above 1s", c.NotifyInterval)
	case c.KeyRetention < time.Minute:
		return argError("config", "KeyRetention", "%s is below 1m", c.KeyRetention)
	case !(c.PruneDuty > 0 && c.PruneDuty <= 1): // also rejects NaN
		return argError("config", "PruneDuty", "%v is outside (0, 1]", c.PruneDuty)
	case c.EventBuffer < 1 || c.EventBuffer > 1<<20:
		return argError("config", "EventBuffer", "%d is outside 1..%d", c.EventBuffer, 1<<20)
	}
	return nil
}

// short keeps user-supplied strings in error messages to a readable size.
func short(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}
