package queue

import (
	"context"
	"fmt"

	"github.com/skiplock/skiplock/batch"
)

// ListState selects the batches List returns. The hot table stores
// available, running and dead batches; ListAvailable and ListScheduled
// split the available ones by whether their run-at has come.
type ListState string

// The states List accepts.
const (
	ListAvailable ListState = "available" // runnable now
	ListScheduled ListState = "scheduled" // waiting for their run-at (new or retrying)
	ListRunning   ListState = "running"   // claimed under a lease (expired or not)
	ListDead      ListState = "dead"      // dead-lettered
)

// Valid reports whether s is one of the ListState constants.
func (s ListState) Valid() bool {
	switch s {
	case ListAvailable, ListScheduled, ListRunning, ListDead:
		return true
	}
	return false
}

// stateArgs returns the stored state and the run-at split of s.
func (s ListState) stateArgs() (string, any) {
	switch s {
	case ListAvailable:
		return string(batch.StateAvailable), true
	case ListScheduled:
		return string(batch.StateAvailable), false
	}
	return string(s), nil
}

// List returns up to limit (1..MaxListLimit) batches of a queue in the
// given state with ids above afterID, in id order; page by passing the last
// id seen. It is meant for operators inspecting a queue: each call reads
// the batch table from afterID on, so listing a state whose batches are a
// small share of a long backlog reads more rows than it returns. A bad
// queue name, state or limit returns an *ArgumentError. It is retried
// across failovers (it only reads).
func (c *Client) List(ctx context.Context, queue string, state ListState, afterID int64, limit int) ([]batch.Batch, error) {
	const op = "list"
	if err := c.check(op); err != nil {
		return nil, err
	}
	if err := validQueue(op, queue); err != nil {
		return nil, err
	}
	if !state.Valid() {
		return nil, argError(op, "state", "%q is not one of available, scheduled, running, dead", short(string(state)))
	}
	if limit < 1 || limit > MaxListLimit {
		return nil, argError(op, "limit", "%d is outside 1..%d", limit, MaxListLimit)
	}
	stored, runnable := state.stateArgs()
	var bs []batch.Batch
	err := c.retry(ctx, op, true, func(ctx context.Context) error {
		ctx, cancel := c.opContext(ctx)
		defer cancel()
		rows, err := c.db.Query(ctx, c.sql.list, queue, stored, afterID, runnable, limit)
		if err != nil {
			return fmt.Errorf("list %s %q: %w", state, short(queue), err)
		}
		bs, err = collectBatches(rows, limit, queue)
		if err != nil {
			return fmt.Errorf("list %s %q: %w", state, short(queue), err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return bs, nil
}
