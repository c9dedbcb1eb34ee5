package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

func (a *app) deadCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dead",
		Args:  cobra.ArbitraryArgs,
		RunE:  groupRunE,
		Short: "List, requeue and delete dead-lettered batches",
	}
	var lp pageFlags
	list := &cobra.Command{
		Use:   "list --queue Q [--limit N] [--after ID]",
		Short: "List the dead batches of a queue, in id order, with their last errors",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireFlag("queue", lp.queue); err != nil {
				return err
			}
			return a.listBatches(cmd, lp, func(ctx context.Context, c *queue.Client) ([]batch.Batch, error) {
				return c.ListDead(ctx, lp.queue, lp.after, lp.limit)
			})
		},
	}
	lp.register(list)

	var rq string
	requeue := &cobra.Command{
		Use:   "requeue --queue Q ID...",
		Short: "Make dead batches available again with fresh attempts (all or nothing: exit 3 if any id is not a dead batch of the queue)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.deadChange(cmd, rq, args, "requeued", func(ctx context.Context, c *queue.Client, ids []int64) (int, error) {
				return c.RequeueDead(ctx, rq, ids)
			})
		},
	}
	requeue.Flags().StringVar(&rq, "queue", "", "the queue (required)")

	var rqa string
	requeueAll := &cobra.Command{
		Use:   "requeue-all --queue Q",
		Short: "Requeue every dead batch of a queue",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.deadChange(cmd, rqa, nil, "requeued", func(ctx context.Context, c *queue.Client, _ []int64) (int, error) {
				return c.RequeueAllDead(ctx, rqa)
			})
		},
	}
	requeueAll.Flags().StringVar(&rqa, "queue", "", "the queue (required)")

	var dq string
	del := &cobra.Command{
		Use:   "delete --queue Q ID...",
		Short: "Delete dead batches for good (all or nothing: exit 3 if any id is not a dead batch of the queue)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.deadChange(cmd, dq, args, "deleted", func(ctx context.Context, c *queue.Client, ids []int64) (int, error) {
				return c.DeleteDead(ctx, dq, ids)
			})
		},
	}
	del.Flags().StringVar(&dq, "queue", "", "the queue (required)")

	cmd.AddCommand(list, requeue, requeueAll, del)
	return cmd
}

// deadChange runs a requeue or delete and prints how many batches it
// changed.
func (a *app) deadChange(cmd *cobra.Command, queueName string, args []string, verb string,
	change func(context.Context, *queue.Client, []int64) (int, error)) error {
	if err := requireFlag("queue", queueName); err != nil {
		return err
	}
	ids, err := parseIDs(args)
	if err != nil {
		return err
	}
	ctx, c, done, err := a.connect(cmd)
	if err != nil {
		return err
	}
	defer done()
	n, err := change(ctx, c, ids)
	if err != nil {
		return err
	}
	if a.json {
		return printJSON(a.stdout, map[string]any{"queue": queueName, verb: n})
	}
	fmt.Fprintf(a.stdout, "%s %d dead batches of queue %q\n", verb, n, queueName)
	return nil
}
