package queue

import (
	"fmt"
	"time"
)

// EventKind names a lifecycle event of batches (see Event).
type EventKind int

const (
	// EventEnqueued: Count new batches were written to Queue by Enqueue or
	// EnqueueMany (duplicates of a known idempotency key are not counted).
	// Enqueues inside a caller's transaction (EnqueueTx, EnqueueManyTx) are
	// not reported: whether they commit is the caller's to know.
	EventEnqueued EventKind = iota + 1
	// EventClaimed: a runner's claim took Count batches.
	EventClaimed
	// EventCompleted: Count completions of a runner were accepted (or, for
	// batches claimed on a replaced writer, handed to the journal).
	EventCompleted
	// EventRetried: an attempt failed and the batch is scheduled for another
	// one; Batches[i].Error is the stored error text.
	EventRetried
	// EventDeadLettered: an attempt failed and it was the last one (or the
	// error was Permanent); Batches[i].Error is the stored error text.
	EventDeadLettered
	// EventLeaseExtended: a heartbeat (or a re-confirmation after a writer
	// change) renewed Count leases.
	EventLeaseExtended
	// EventLeaseLost: the database refused Count acknowledgements
	// (completion, failure, release) because the lease was lost: another
	// claim or a reclaim had the batch. It counts what RunnerStats.LeaseLost
	// counts. (A renewal that finds a lease gone cancels the handler with
	// ErrLeaseLost; its outcome is then refused and reported here.)
	EventLeaseLost
	// EventReleased: Count batches were given back without using up their
	// attempt (shutdown, lease not renewed, claims whose answer was lost).
	EventReleased
	// EventReclaimed: a runner's reclaim made Count expired leases of Queue
	// claimable again (or dead-lettered them, when out of attempts).
	EventReclaimed
	// EventReassertedEnqueues: after a writer change, Count journaled
	// enqueues the new writer was missing were written again. Queue is empty.
	EventReassertedEnqueues
	// EventReassertedCompletions: after a writer change, Count journaled
	// completions the new writer was missing were recorded again. Queue is
	// empty.
	EventReassertedCompletions
)

var eventKindNames = map[EventKind]string{
	EventEnqueued:              "enqueued",
	EventClaimed:               "claimed",
	EventCompleted:             "completed",
	EventRetried:               "retried",
	EventDeadLettered:          "dead_lettered",
	EventLeaseExtended:         "lease_extended",
	EventLeaseLost:             "lease_lost",
	EventReleased:              "released",
	EventReclaimed:             "reclaimed",
	EventReassertedEnqueues:    "reasserted_enqueues",
	EventReassertedCompletions: "reasserted_completions",
}

// String returns the kind's snake_case name.
func (k EventKind) String() string {
	if s, ok := eventKindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// Event reports what happened to Count batches at once: one event per kind
// per round trip (a claim of 100 batches is one EventClaimed with Count
// 100), so the cost of an OnEvent hook does not grow with the claim size.
type Event struct {
	Kind  EventKind
	Queue string    // the queue; empty for the client-wide re-assertions
	Count int       // how many batches the event is about; at least 1
	At    time.Time // when the event was emitted (local clock)
	// Batches lists the batches, for the kinds that concern known claimed
	// batches (claimed, completed, retried, dead-lettered, lease extended,
	// lease lost, released by a handler's outcome); nil for the others
	// (enqueued, reclaimed, re-asserted, and releases of lost claims).
	// The slice belongs to the event.
	Batches []EventBatch
}

// EventBatch is one batch of an Event.
type EventBatch struct {
	ID        int64
	Attempt   int       // the attempt the claim started
	CreatedAt time.Time // when the batch was enqueued (database clock)
	// Error is the stored error text of a failed attempt (EventRetried,
	// EventDeadLettered); empty otherwise.
	Error string
}

// OnEventFunc receives the client's and its runners' events (see
// Config.OnEvent). It runs on one goroutine of the client's, one event at a
// time, never on a claim loop or a handler's goroutine.
type OnEventFunc func(Event)

// EventStats counts what became of the events of a Client with an OnEvent
// hook.
type EventStats struct {
	Delivered int64 // events the callback returned from
	// Dropped counts events discarded because the buffer
	// (Config.EventBuffer) was full: the callback was slower than the
	// events, or blocked.
	Dropped int64
	// Panics counts callback calls that panicked or called
	// runtime.Goexit; the delivering goroutine was replaced each time.
	Panics int64
}

// String formats the event for logs and test output.
func (e Event) String() string {
	return fmt.Sprintf("%s queue=%q count=%d", e.Kind, e.Queue, e.Count)
}
