package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/skiplock/skiplock/queue"
)

// Defaults of doctor's thresholds.
const (
	XactAgeWarnDefault         = 5 * time.Minute
	XactAgeCriticalDefault     = time.Hour
	DeadTuplesWarnDefault      = 100_000
	DeadTuplesCriticalDefault  = 1_000_000
	LagWarnDefault             = 10 * time.Second
	LagCriticalDefault         = 5 * time.Minute
	SlotXminAgeWarnDefault     = 10_000_000
	SlotXminAgeCriticalDefault = 500_000_000
	PruneGraceDefault          = time.Hour
)

// thresholds are doctor's limits, each a flag.
type thresholds struct {
	// XactAgeWarn and XactAgeCritical bound how long a transaction (or a
	// prepared transaction) may hold back the xmin horizon: while it does,
	// no dead tuple of the hot table can be removed. Defaults to
	// XactAgeWarnDefault and XactAgeCriticalDefault.
	XactAgeWarn, XactAgeCritical time.Duration
	// DeadTuplesWarn and DeadTuplesCritical bound the hot table's dead
	// tuples (claims slow down as they pile up at the head of the claim
	// index). Defaults to DeadTuplesWarnDefault and
	// DeadTuplesCriticalDefault.
	DeadTuplesWarn, DeadTuplesCritical int64
	// LagWarn and LagCritical bound a streaming replica's replay lag: what
	// a failover to it would lose, or wait for. Defaults to LagWarnDefault
	// and LagCriticalDefault.
	LagWarn, LagCritical time.Duration
	// SlotXminAgeWarn and SlotXminAgeCritical bound, in transactions, how
	// far a replication slot's xmin or catalog_xmin lags. Defaults to
	// SlotXminAgeWarnDefault and SlotXminAgeCriticalDefault.
	SlotXminAgeWarn, SlotXminAgeCritical int64
	// KeyRetention and DoneRetention are the retention the services
	// configure (queue.Config); rows older than these plus PruneGrace mean
	// pruning is behind. Defaults to queue.KeyRetentionDefault,
	// queue.DoneRetentionDefault and PruneGraceDefault.
	KeyRetention, DoneRetention, PruneGrace time.Duration
}

func (t *thresholds) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.DurationVar(&t.XactAgeWarn, "xact-age-warn", XactAgeWarnDefault, "warn when a transaction has held back the xmin horizon this long")
	f.DurationVar(&t.XactAgeCritical, "xact-age-critical", XactAgeCriticalDefault, "critical when a transaction has held back the xmin horizon this long")
	f.Int64Var(&t.DeadTuplesWarn, "dead-tuples-warn", DeadTuplesWarnDefault, "warn at this many dead tuples in the hot table")
	f.Int64Var(&t.DeadTuplesCritical, "dead-tuples-critical", DeadTuplesCriticalDefault, "critical at this many dead tuples in the hot table")
	f.DurationVar(&t.LagWarn, "lag-warn", LagWarnDefault, "warn when a replica's replay lag reaches this")
	f.DurationVar(&t.LagCritical, "lag-critical", LagCriticalDefault, "critical when a replica's replay lag reaches this")
	f.Int64Var(&t.SlotXminAgeWarn, "slot-xmin-age-warn", SlotXminAgeWarnDefault, "warn when a replication slot holds back the xmin horizon by this many transactions")
	f.Int64Var(&t.SlotXminAgeCritical, "slot-xmin-age-critical", SlotXminAgeCriticalDefault, "critical when a replication slot holds back the xmin horizon by this many transactions")
	f.DurationVar(&t.KeyRetention, "key-retention", queue.KeyRetentionDefault, "the services' queue.Config.KeyRetention")
	f.DurationVar(&t.DoneRetention, "done-retention", queue.DoneRetentionDefault, "the services' queue.Config.DoneRetention")
	f.DurationVar(&t.PruneGrace, "prune-grace", PruneGraceDefault, "how far past its retention a row may be before pruning counts as behind")
}

func (t *thresholds) validate() error {
	switch {
	case t.XactAgeWarn <= 0 || t.XactAgeCritical < t.XactAgeWarn:
		return usageErrorf("--xact-age-warn must be positive and at most --xact-age-critical")
	case t.DeadTuplesWarn < 0 || t.DeadTuplesCritical < t.DeadTuplesWarn:
		return usageErrorf("--dead-tuples-warn must be at least 0 and at most --dead-tuples-critical")
	case t.LagWarn <= 0 || t.LagCritical < t.LagWarn:
		return usageErrorf("--lag-warn must be positive and at most --lag-critical")
	case t.SlotXminAgeWarn < 0 || t.SlotXminAgeCritical < t.SlotXminAgeWarn:
		return usageErrorf("--slot-xmin-age-warn must be at least 0 and at most --slot-xmin-age-critical")
	case t.KeyRetention <= 0 || t.DoneRetention <= 0 || t.PruneGrace < 0:
		return usageErrorf("--key-retention and --done-retention must be positive, --prune-grace not negative")
	}
	return nil
}

// severity ranks a finding.
type severity string

const (
	sevOK       severity = "ok"
	sevWarn     severity = "warn"
	sevCritical severity = "critical"
)

// finding is one result of doctor.
type finding struct {
	Check    string         `json:"check"`
	Severity severity       `json:"severity"`
	Summary  string         `json:"summary"`
	Action   string         `json:"action,omitempty"` // what to do; empty when nothing is needed
	Details  map[string]any `json:"details,omitempty"`
}

type doctorReport struct {
	Findings []finding `json:"findings"`
	Critical int       `json:"critical"`
	Warnings int       `json:"warnings"`
}

func (a *app) doctorCommand() *cobra.Command {
	var th thresholds
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check the endpoint: writer, pooler, hot-table bloat, xmin horizon, replication, retention, migrations (exit 4 on a critical finding)",
		Long: `doctor checks what the endpoint reaches, through one connection: who the
writer is and whether the endpoint reaches a standby or a read-only node; whether a
transaction-mode pooler sits in front (LISTEN and session settings then do not
work); the hot table's dead tuples, vacuums and autovacuum settings; the oldest
transaction, prepared transactions and replication slots that hold back the xmin
horizon (no dead tuple can be removed meanwhile); replication lag; the sizes of the
idempotency-key and completion tables against the retention; and the schema's
migration version. Each finding has a severity (ok, warn, critical) and what to do.
It exits 4 when any finding is critical.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := th.validate(); err != nil {
				return err
			}
			ctx, cancel, err := a.commandContext(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			cfg, err := a.connConfig()
			if err != nil {
				return err
			}
			// The simple protocol passes through any pooler.
			cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
			conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
			if err != nil {
				return fmt.Errorf("connect: %w", err)
			}
			defer conn.Close(context.WithoutCancel(ctx))
			d := &doctor{conn: conn, schema: a.schema, th: th, redact: a.redact}
			rep := d.run(ctx)
			if err := a.printDoctor(rep); err != nil {
				return err
			}
			if rep.Critical > 0 {
				return errCheckFailed
			}
			return nil
		},
	}
	th.register(cmd)
	return cmd
}

func (a *app) printDoctor(rep doctorReport) error {
	if a.json {
		return printJSON(a.stdout, rep)
	}
	t := newTable(a.stdout, "SEVERITY", "CHECK", "FINDING", "WHAT TO DO")
	for _, f := range rep.Findings {
		t.row(string(f.Severity), f.Check, f.Summary, f.Action)
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "\n%d critical, %d warnings\n", rep.Critical, rep.Warnings)
	return nil
}
