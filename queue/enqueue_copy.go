package queue

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// copyMinRows is the smallest chunk the bulk path sends with COPY; below it
// the one-statement path is cheaper than COPY's extra round trips.
const copyMinRows = 500

// copier is implemented by DBs and transactions that can COPY rows in
// (*pgxpool.Pool, pgx.Tx, the failover package's Pool).
type copier interface {
	CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, rows pgx.CopyFromSource) (int64, error)
}

// copyColumns are the columns a COPY enqueue writes; the others take their
// defaults (run_at and created_at: the database's now()).
var copyColumns = []string{"id", "queue", "priority", "max_attempts", "partition_key", "uri",
	"source_topic", "source_partition", "source_start", "source_end", "event_count", "byte_size", "payload"}

// copyable reports whether rows lo..hi can go by COPY: large enough, no
// idempotency keys (they need ON CONFLICT) and no schedule (run_at is
// computed from the database clock, which COPY cannot do).
func (cols *enqueueColumns) copyable(lo, hi int) bool {
	return hi-lo >= copyMinRows && cols.runAt == nil && cols.delay == nil && !cols.keyedIn(lo, hi)
}

// enqueueCopy writes rows lo..hi with COPY: it takes their ids from the
// batch sequence first (so they come back in input order), copies the rows,
// and then wakes the queues' runners. COPY is one statement, so the rows
// land all or none; ids taken for a failed COPY are simply skipped.
func (c *Client) enqueueCopy(ctx context.Context, cp copier, q querier, cols *enqueueColumns, lo, hi int) ([]*int64, error) {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	n := hi - lo
	wrap := func(err error) error {
		return fmt.Errorf("enqueue %d batches into %q: %w", n, short(cols.queue[lo]), err)
	}
	rows, err := q.Query(ctx, c.sql.takeIDs, c.sql.sequence, n)
	if err != nil {
		return nil, wrap(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, wrap(err)
	}
	if len(ids) != n {
		return nil, wrap(fmt.Errorf("got %d ids for %d batches", len(ids), n))
	}
	nullText := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	row := make([]any, len(copyColumns))
	src := pgx.CopyFromFunc(func() func() ([]any, error) {
		i := 0
		return func() ([]any, error) {
			if i == n {
				return nil, nil
			}
			k := lo + i
			row[0], row[1], row[3] = ids[i], cols.queue[k], cols.maxAttempts[k]
			row[2] = int16(0)
			if cols.priority != nil {
				row[2] = cols.priority[k]
			}
			row[4], row[5], row[6], row[7], row[8], row[9] = nil, nil, nil, nil, nil, nil
			if cols.partKey != nil {
				row[4] = nullText(cols.partKey[k])
			}
			if cols.uri != nil {
				row[5] = nullText(cols.uri[k])
			}
			if cols.topic != nil && cols.topic[k] != "" {
				row[6], row[7], row[8], row[9] = cols.topic[k], cols.partition[k], cols.start[k], cols.end[k]
			}
			row[10], row[11], row[12] = int64(0), int64(0), nil
			if cols.events != nil {
				row[10] = cols.events[k]
			}
			if cols.size != nil {
				row[11] = cols.size[k]
			}
			if cols.payload != nil && cols.payload[k] != nil {
				row[12] = cols.payload[k]
			}
			i++
			return row, nil
		}
	}())
	copied, err := cp.CopyFrom(ctx, pgx.Identifier{c.cfg.Schema, "batch"}, copyColumns, src)
	if err != nil {
		return nil, wrap(err)
	}
	if copied != int64(n) {
		return nil, wrap(fmt.Errorf("copied %d of %d batches", copied, n))
	}
	if ch := cols.notify; ch != nil {
		queues := map[string]bool{}
		for _, name := range cols.queue[lo:hi] {
			queues[name] = true
		}
		names := make([]string, 0, len(queues))
		for name := range queues {
			names = append(names, name)
		}
		// A lost wake-up only delays work until the next poll; the rows are in.
		if _, err := q.Exec(ctx, c.sql.wake, ch, names); err != nil {
			c.log.Warn("could not wake runners after a bulk enqueue", zap.Error(err))
		}
	}
	out := make([]*int64, n)
	for i := range ids {
		out[i] = &ids[i]
	}
	return out, nil
}
