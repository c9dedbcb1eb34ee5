package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

// pauseCommand is "pause QUEUE" or "resume QUEUE".
func (a *app) pauseCommand(verb string) *cobra.Command {
	short := "Stop claims from a queue (running batches finish; enqueues still work)"
	if verb == "resume" {
		short = "Let claims from a paused queue start again and wake its runners"
	}
	return &cobra.Command{
		Use:   verb + " QUEUE",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if name == "" {
				return usageErrorf("empty queue name")
			}
			ctx, c, done, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer done()
			if verb == "pause" {
				err = c.Pause(ctx, name)
			} else {
				err = c.Resume(ctx, name)
			}
			if err != nil {
				return err
			}
			paused := verb == "pause"
			if a.json {
				return printJSON(a.stdout, map[string]any{"queue": name, "paused": paused})
			}
			fmt.Fprintf(a.stdout, "queue %q %sd\n", name, verb)
			return nil
		},
	}
}
