package failover

import (
	"fmt"
	"time"
)

// EventKind names a state change of the pool.
type EventKind int

const (
	// EventGenerationReady: a new generation serves requests, pinned to the
	// writer in To (From is the previous writer, zero for the first).
	EventGenerationReady EventKind = iota + 1
	// EventStaleWriter: the writer of the current generation (From) is no
	// longer the writer; Err says how it was found out. The generation is
	// retired at once: it hands out no more connections.
	EventStaleWriter
	// EventDrainStarted: a retired generation's in-flight work is finishing
	// or failing; its idle connections are closed.
	EventDrainStarted
	// EventDrainDone: every connection of a retired generation is closed.
	EventDrainDone
	// EventProbeFailed: a probe could not reach the endpoint (Err).
	EventProbeFailed
	// EventNoWriter: the endpoint answered, but not as a writer (To is the
	// server it reached, Err says why).
	EventNoWriter
)

var eventNames = map[EventKind]string{
	EventGenerationReady: "generation_ready",
	EventStaleWriter:     "stale_writer",
	EventDrainStarted:    "drain_started",
	EventDrainDone:       "drain_done",
	EventProbeFailed:     "probe_failed",
	EventNoWriter:        "no_writer",
}

// String returns the kind's snake_case name, as used in logs.
func (k EventKind) String() string {
	if s, ok := eventNames[k]; ok {
		return s
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// Event is one state change of the pool.
type Event struct {
	Kind       EventKind
	Generation int64 // the generation the event is about
	From, To   Identity
	Err        error
	At         time.Time
}

// String formats the event for logs and test output.
func (e Event) String() string {
	s := fmt.Sprintf("%s gen=%d", e.Kind, e.Generation)
	if !e.From.IsZero() {
		s += " from=" + e.From.String()
	}
	if !e.To.IsZero() {
		s += " to=" + e.To.String()
	}
	if e.Err != nil {
		s += " err=" + e.Err.Error()
	}
	return s
}
