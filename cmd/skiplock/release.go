package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

type releaseResult struct {
	Queue    string  `json:"queue"`
	Owner    string  `json:"owner"`
	Held     []int64 `json:"held"`
	Released []int64 `json:"released"`
	Dead     []int64 `json:"dead"`
	Skipped  []int64 `json:"skipped"`
}

func (a *app) releaseLeasesCommand() *cobra.Command {
	var queueName, owner string
	cmd := &cobra.Command{
		Use:   "release-leases --queue Q --owner O",
		Short: "Make the running batches of a worker known to be gone claimable again at once",
		Long: `release-leases ends, now, every lease the owner holds in the queue, as if
it had expired: each batch is claimable again at once, or dead-lettered when
that lease was its last attempt (the attempt counts, as when a lease expires).
Each batch is changed only while the lease token read still holds it for that
owner, so a lease taken since (reclaimed and claimed again, even by a worker of
the same name) is left alone and reported as skipped.

Use it only for a worker that is gone: a live one loses its leases, and its
batches may run twice.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireFlag("queue", queueName); err != nil {
				return err
			}
			if err := requireFlag("owner", owner); err != nil {
				return err
			}
			ctx, c, done, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer done()
			res, err := c.ReleaseOwner(ctx, queueName, owner)
			if err != nil {
				return err
			}
			out := releaseResult{Queue: queueName, Owner: owner, Held: nonNil(res.Held),
				Released: nonNil(res.Released), Dead: nonNil(res.Dead), Skipped: nonNil(res.Skipped())}
			if a.json {
				return printJSON(a.stdout, out)
			}
			fmt.Fprintf(a.stdout, "owner %s held %d leases in queue %s: %d released, %d dead-lettered (last attempt), %d skipped (lease changed meanwhile)\n",
				cell(fmt.Sprintf("%q", owner)), len(out.Held), cell(fmt.Sprintf("%q", queueName)), len(out.Released), len(out.Dead), len(out.Skipped))
			return nil
		},
	}
	cmd.Flags().StringVar(&queueName, "queue", "", "the queue (required)")
	cmd.Flags().StringVar(&owner, "owner", "", "the lease owner, as list --state running shows it (required)")
	return cmd
}

func nonNil(ids []int64) []int64 {
	if ids == nil {
		return []int64{}
	}
	return ids
}
