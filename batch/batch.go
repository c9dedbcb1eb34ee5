package batch

import "time"

// State is the lifecycle state of a queued batch, stored as text.
type State string

// The states of a batch. A batch is enqueued available, becomes running when
// claimed, and then completed, available again (retry, or lease expiry) or
// dead after its last attempt.
const (
	// StateAvailable: waiting to be claimed, possibly scheduled for later
	// (RunAt in the future, including retries).
	StateAvailable State = "available"
	// StateRunning: claimed under a lease.
	StateRunning State = "running"
	// StateDead: dead-lettered after its last attempt; can be requeued.
	StateDead State = "dead"
	// StateCompleted: finished; no longer in the hot table.
	StateCompleted State = "completed"
)

// Valid reports whether s is one of the State constants.
func (s State) Valid() bool {
	switch s {
	case StateAvailable, StateRunning, StateDead, StateCompleted:
		return true
	}
	return false
}

// Lease is a claim on a batch: its fencing token, its owner and its expiry,
// from the database clock. Completing, failing or extending a claimed batch
// succeeds only with the current Token. The zero Lease means "not claimed".
type Lease struct {
	// Token is the fencing token of the claim; every claim of a batch gets a
	// new one.
	Token int64 `json:"token"`
	// Owner identifies the claiming worker.
	Owner string `json:"owner"`
	// ExpiresAt is when the lease expires unless extended (database clock).
	ExpiresAt time.Time `json:"expires_at"`
}

// Batch is a queued batch as stored by the queue: the producer's Meta plus
// the queue's bookkeeping. In JSON, Meta's fields appear inline.
type Batch struct {
	// ID identifies the batch within its database.
	ID int64 `json:"id"`
	// Queue names the queue (see ValidateQueueName).
	Queue string `json:"queue"`
	// State is the lifecycle state.
	State State `json:"state"`
	// Meta describes the batch's events (embedded; inline in JSON).
	Meta
	// IdempotencyKey deduplicates enqueues within the queue; empty for none
	// (see ValidateIdempotencyKey and Source.Key).
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	// Priority orders claims: lower runs first.
	Priority int16 `json:"priority"`
	// Attempt counts the claims so far, including the current one.
	Attempt int `json:"attempt"`
	// MaxAttempts is the number of claims after which a failure dead-letters
	// the batch.
	MaxAttempts int `json:"max_attempts"`
	// RunAt is when the batch becomes claimable (database clock).
	RunAt time.Time `json:"run_at"`
	// CreatedAt is when the batch was enqueued (database clock).
	CreatedAt time.Time `json:"created_at"`
	// Lease is the current claim; zero when not running.
	Lease Lease `json:"lease,omitzero"`
	// LastError is the error of the last failed attempt, at most
	// MaxLastErrorBytes (see TruncateError).
	LastError string `json:"last_error,omitempty"`
}
