package queue

import (
	"context"
	"fmt"
	"unicode/utf8"
)

// OwnerRelease is what ReleaseOwner did.
type OwnerRelease struct {
	// Held are the batches the owner held when the leases were read.
	Held []int64
	// Released were made available again, claimable at once.
	Released []int64
	// Dead were dead-lettered: their lease was their last attempt.
	Dead []int64
}

// Skipped returns the batches in Held that were neither released nor
// dead-lettered: their lease changed between the read and the update (the
// owner finished them, or they were reclaimed and claimed again).
func (r *OwnerRelease) Skipped() []int64 {
	done := make(map[int64]bool, len(r.Released)+len(r.Dead))
	for _, id := range r.Released {
		done[id] = true
	}
	for _, id := range r.Dead {
		done[id] = true
	}
	var out []int64
	for _, id := range r.Held {
		if !done[id] {
			out = append(out, id)
		}
	}
	return out
}

// ReleaseOwner ends, now, every lease that owner (a worker known to be
// gone) holds on batches of a queue, as if the leases had expired: each
// batch becomes claimable again at once, or is dead-lettered when its
// lease was its last attempt; the attempt counts, as it does when a lease
// expires, and last_error says who released it. One statement reads the
// owner's leases and changes each batch only while the token it read still
// holds it for that owner, so a lease taken since (reclaimed and claimed
// again, even by a worker of the same name) is left alone. Runners of the
// queue are woken when a batch became available.
//
// Use it only for an owner that is gone: a live worker whose lease is
// released gets ErrLeaseLost when it acknowledges, and its batch may run
// twice meanwhile. An empty owner, an owner longer than MaxOwnerBytes, not
// valid UTF-8 or holding NUL, or a bad queue name return an *ArgumentError.
// It is repeated only after failures that prove nothing was committed;
// others return an *OutcomeUnknownError (see Stats or List for what
// happened).
func (c *Client) ReleaseOwner(ctx context.Context, queue, owner string) (*OwnerRelease, error) {
	const op = "release owner"
	if err := c.check(op); err != nil {
		return nil, err
	}
	if err := validQueue(op, queue); err != nil {
		return nil, err
	}
	if owner == "" || len(owner) > MaxOwnerBytes || containsNUL(owner) || !utf8.ValidString(owner) {
		return nil, argError(op, "owner", "empty, longer than %d bytes, not valid UTF-8 or contains NUL", MaxOwnerBytes)
	}
	var res OwnerRelease
	err := c.retry(ctx, op, false, func(ctx context.Context) error {
		ctx, cancel := c.opContext(ctx)
		defer cancel()
		res = OwnerRelease{}
		var woken int64
		err := c.db.QueryRow(ctx, c.sql.releaseOwner, queue, owner, c.channel()).
			Scan(&res.Held, &res.Released, &res.Dead, &woken)
		if err != nil {
			return fmt.Errorf("release leases of %q in %q: %w", short(owner), short(queue), err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &res, nil
}
