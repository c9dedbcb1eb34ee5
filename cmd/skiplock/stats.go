package main

import (
	"strconv"

	"github.com/spf13/cobra"
)

type statsRow struct {
	Queue            string  `json:"queue"`
	Available        int64   `json:"available"`
	Scheduled        int64   `json:"scheduled"`
	Running          int64   `json:"running"`
	ExpiredLeases    int64   `json:"expired_leases"`
	Dead             int64   `json:"dead"`
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
	Paused           bool    `json:"paused"`
}

func (a *app) statsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "stats [QUEUE]",
		Short: "Per queue: available, scheduled, running, expired leases, dead, age of the oldest runnable batch, paused",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				if args[0] == "" {
					return usageErrorf("empty queue name")
				}
				name = args[0]
			}
			ctx, c, done, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer done()
			stats, err := c.Stats(ctx, name)
			if err != nil {
				return err
			}
			rows := make([]statsRow, len(stats))
			for i, s := range stats {
				rows[i] = statsRow{Queue: s.Queue, Available: s.Available, Scheduled: s.Scheduled, Running: s.Running,
					ExpiredLeases: s.Expired, Dead: s.Dead, OldestAgeSeconds: s.OldestAge.Seconds(), Paused: s.Paused}
			}
			if a.json {
				return printJSON(a.stdout, rows)
			}
			t := newTable(a.stdout, "QUEUE", "AVAILABLE", "SCHEDULED", "RUNNING", "EXPIRED LEASES", "DEAD", "OLDEST", "PAUSED")
			for i, r := range rows {
				t.row(r.Queue, itoa(r.Available), itoa(r.Scheduled), itoa(r.Running), itoa(r.ExpiredLeases),
					itoa(r.Dead), ago(stats[i].OldestAge), yesNo(r.Paused))
			}
			return t.flush()
		},
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
