package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// listLimitDefault is the page size of list and dead list.
const listLimitDefault = 100

// pageFlags are the paging flags of list and dead list.
type pageFlags struct {
	queue string
	limit int
	after int64
}

func (p *pageFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&p.queue, "queue", "", "the queue (required)")
	cmd.Flags().IntVar(&p.limit, "limit", listLimitDefault, fmt.Sprintf("most batches to list, 1..%d", queue.MaxListLimit))
	cmd.Flags().Int64Var(&p.after, "after", 0, "list batches with ids above this one (the last id of the previous page)")
}

func (a *app) listCommand() *cobra.Command {
	var p pageFlags
	var state string
	cmd := &cobra.Command{
		Use:   "list --queue Q --state available|scheduled|running|dead [--limit N] [--after ID]",
		Short: "List the batches of a queue in one state, in id order",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireFlag("queue", p.queue); err != nil {
				return err
			}
			if err := requireFlag("state", state); err != nil {
				return err
			}
			if !queue.ListState(state).Valid() {
				return usageErrorf("--state %q: must be available, scheduled, running or dead", truncateCell(state, 64))
			}
			return a.listBatches(cmd, p, func(ctx context.Context, c *queue.Client) ([]batch.Batch, error) {
				return c.List(ctx, p.queue, queue.ListState(state), p.after, p.limit)
			})
		},
	}
	p.register(cmd)
	cmd.Flags().StringVar(&state, "state", "", "available (runnable now), scheduled (run-at later), running or dead (required)")
	return cmd
}

// listBatches runs one listing and prints it.
func (a *app) listBatches(cmd *cobra.Command, p pageFlags, list func(context.Context, *queue.Client) ([]batch.Batch, error)) error {
	if p.limit < 1 || p.limit > queue.MaxListLimit {
		return usageErrorf("--limit %d: must be 1..%d", p.limit, queue.MaxListLimit)
	}
	ctx, c, done, err := a.connect(cmd)
	if err != nil {
		return err
	}
	defer done()
	bs, err := list(ctx, c)
	if err != nil {
		return err
	}
	if a.json {
		if bs == nil {
			bs = []batch.Batch{}
		}
		return printJSON(a.stdout, bs)
	}
	t := newTable(a.stdout, "ID", "STATE", "PRIORITY", "ATTEMPT", "RUN AT", "OWNER", "LEASE EXPIRES", "URI", "LAST ERROR")
	for _, b := range bs {
		t.row(itoa(b.ID), string(b.State), strconv.Itoa(int(b.Priority)),
			fmt.Sprintf("%d/%d", b.Attempt, b.MaxAttempts), timestamp(b.RunAt), b.Lease.Owner,
			timestamp(b.Lease.ExpiresAt), truncateCell(b.URI, 60), truncateCell(firstLine(b.LastError), 60))
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(bs) == p.limit {
		fmt.Fprintf(a.stderr, "more may follow: --after %d\n", bs[len(bs)-1].ID)
	}
	return nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func (a *app) showCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show every column of one batch (exit 3 if it is not queued, running or dead)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			ctx, c, done, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer done()
			b, err := c.Get(ctx, id)
			if errors.Is(err, queue.ErrNotFound) {
				msg := fmt.Sprintf("batch %d not found: it is not queued, running or dead", id)
				if completed, cerr := c.Completed(ctx, id); cerr == nil && completed {
					msg = fmt.Sprintf("batch %d not found: it was completed (a completion record is kept for the done retention)", id)
				}
				return &exitError{code: exitNotFound, err: errors.New(msg)}
			}
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(a.stdout, b)
			}
			t := newTable(a.stdout, "FIELD", "VALUE")
			t.row("id", itoa(b.ID))
			t.row("queue", b.Queue)
			t.row("state", string(b.State))
			t.row("priority", strconv.Itoa(int(b.Priority)))
			t.row("attempt", fmt.Sprintf("%d of %d", b.Attempt, b.MaxAttempts))
			t.row("run_at", timestamp(b.RunAt))
			t.row("created_at", timestamp(b.CreatedAt))
			t.row("lease_token", tokenText(b.Lease.Token))
			t.row("lease_owner", b.Lease.Owner)
			t.row("lease_expires_at", timestamp(b.Lease.ExpiresAt))
			t.row("idempotency_key", b.IdempotencyKey)
			t.row("partition_key", b.PartitionKey)
			t.row("uri", b.URI)
			t.row("source", sourceText(b.Source))
			t.row("event_count", itoa(b.EventCount))
			t.row("byte_size", itoa(b.ByteSize))
			t.row("payload", fmt.Sprintf("%d bytes", len(b.Payload)))
			t.row("last_error", b.LastError)
			return t.flush()
		},
	}
}

func tokenText(t int64) string {
	if t == 0 {
		return ""
	}
	return itoa(t)
}

func sourceText(s batch.Source) string {
	if s.Topic == "" {
		return ""
	}
	return fmt.Sprintf("%s/%d [%d, %d)", s.Topic, s.Partition, s.Start, s.End)
}

// parseID parses a batch id argument.
func parseID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id < 1 {
		return 0, usageErrorf("%q is not a batch id (a positive integer)", truncateCell(s, 64))
	}
	return id, nil
}

// parseIDs parses batch id arguments.
func parseIDs(args []string) ([]int64, error) {
	ids := make([]int64, len(args))
	for i, s := range args {
		id, err := parseID(s)
		if err != nil {
			return nil, err
		}
		ids[i] = id
	}
	return ids, nil
}
