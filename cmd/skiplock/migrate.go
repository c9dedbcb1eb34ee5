package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/skiplock/skiplock/migrations"
)

func (a *app) migrateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Args:  cobra.ArbitraryArgs,
		RunE:  groupRunE,
		Short: "Apply, revert, list and validate the schema's migrations",
	}
	up := &cobra.Command{
		Use:   "up",
		Short: "Apply every migration the schema does not have yet",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withMigrator(cmd, func(ctx context.Context, m *migrations.Migrator) error {
				res, err := m.Up(ctx)
				if err != nil {
					return err
				}
				return a.printMigrateResult(res)
			})
		},
	}
	var to int
	down := &cobra.Command{
		Use:   "down --to N",
		Short: "Revert applied migrations above version N (0 removes every table)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("to") {
				return usageErrorf("--to is required (0 reverts everything)")
			}
			if to < 0 || to > migrations.Latest() {
				return usageErrorf("--to %d: version must be between 0 and %d", to, migrations.Latest())
			}
			return a.withMigrator(cmd, func(ctx context.Context, m *migrations.Migrator) error {
				res, err := m.Down(ctx, to)
				if err != nil {
					return err
				}
				return a.printMigrateResult(res)
			})
		},
	}
	down.Flags().IntVar(&to, "to", 0, "the version to go down to (required)")
	status := &cobra.Command{
		Use:   "status",
		Short: "List every version this binary knows and the database has",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withMigrator(cmd, func(ctx context.Context, m *migrations.Migrator) error {
				st, err := m.Status(ctx)
				if err != nil {
					return err
				}
				return a.printMigrateStatus(st)
			})
		},
	}
	validate := &cobra.Command{
		Use:   "validate",
		Short: "Exit 4 unless the schema is at the latest version this binary knows",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withMigrator(cmd, func(ctx context.Context, m *migrations.Migrator) error {
				st, err := m.Status(ctx)
				if err != nil {
					return err
				}
				return a.validateMigrations(st)
			})
		},
	}
	cmd.AddCommand(up, down, status, validate)
	return cmd
}

func (a *app) withMigrator(cmd *cobra.Command, fn func(context.Context, *migrations.Migrator) error) error {
	ctx, cancel, err := a.commandContext(cmd)
	if err != nil {
		return err
	}
	defer cancel()
	pool, err := a.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	m, err := migrations.New(pool, &migrations.Config{Schema: a.schema})
	if err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	return fn(ctx, m)
}

type migrateResult struct {
	Applied  []int `json:"applied"`
	Reverted []int `json:"reverted"`
	Version  int   `json:"version"`
	Latest   int   `json:"latest"`
}

func (a *app) printMigrateResult(res *migrations.Result) error {
	out := migrateResult{Applied: res.Applied, Reverted: res.Reverted, Version: res.Version, Latest: migrations.Latest()}
	if out.Applied == nil {
		out.Applied = []int{}
	}
	if out.Reverted == nil {
		out.Reverted = []int{}
	}
	if a.json {
		return printJSON(a.stdout, out)
	}
	switch {
	case len(out.Applied) > 0:
		fmt.Fprintf(a.stdout, "applied %v; schema %q is at version %d of %d\n", out.Applied, a.schema, out.Version, out.Latest)
	case len(out.Reverted) > 0:
		fmt.Fprintf(a.stdout, "reverted %v; schema %q is at version %d of %d\n", out.Reverted, a.schema, out.Version, out.Latest)
	default:
		fmt.Fprintf(a.stdout, "nothing to do; schema %q is at version %d of %d\n", a.schema, out.Version, out.Latest)
	}
	return nil
}

type migrateStatus struct {
	Version   int        `json:"version"`
	Name      string     `json:"name"`
	Applied   bool       `json:"applied"`
	AppliedAt *time.Time `json:"applied_at"`
	Known     bool       `json:"known"`
}

func (a *app) printMigrateStatus(st []migrations.Status) error {
	out := make([]migrateStatus, len(st))
	for i, s := range st {
		out[i] = migrateStatus{Version: s.Version, Name: s.Name, Applied: s.Applied, Known: s.Known}
		if s.Applied {
			at := s.AppliedAt
			out[i].AppliedAt = &at
		}
	}
	if a.json {
		return printJSON(a.stdout, out)
	}
	t := newTable(a.stdout, "VERSION", "NAME", "APPLIED", "APPLIED AT", "KNOWN")
	for _, s := range out {
		at := ""
		if s.AppliedAt != nil {
			at = timestamp(*s.AppliedAt)
		}
		t.row(strconv.Itoa(s.Version), s.Name, yesNo(s.Applied), at, yesNo(s.Known))
	}
	return t.flush()
}

type migrateValidation struct {
	Version int    `json:"version"`
	Latest  int    `json:"latest"`
	Pending []int  `json:"pending"`
	Unknown []int  `json:"unknown"`
	OK      bool   `json:"ok"`
	Message string `json:"message"`
}

func (a *app) validateMigrations(st []migrations.Status) error {
	v := migrateValidation{Latest: migrations.Latest(), Pending: []int{}, Unknown: []int{}}
	for _, s := range st {
		switch {
		case !s.Known:
			v.Unknown = append(v.Unknown, s.Version)
		case !s.Applied:
			v.Pending = append(v.Pending, s.Version)
		}
		if s.Applied && s.Version > v.Version {
			v.Version = s.Version
		}
	}
	v.OK = len(v.Pending) == 0 && len(v.Unknown) == 0
	switch {
	case v.OK:
		v.Message = fmt.Sprintf("schema %q is at version %d, the latest this binary knows", a.schema, v.Version)
	case len(v.Unknown) > 0:
		v.Message = fmt.Sprintf("schema %q has versions %v this binary does not know (it knows up to %d): upgrade skiplock", a.schema, v.Unknown, v.Latest)
	default:
		v.Message = fmt.Sprintf("schema %q is at version %d; pending: %v: run 'skiplock migrate up'", a.schema, v.Version, v.Pending)
	}
	if a.json {
		if err := printJSON(a.stdout, v); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(a.stdout, v.Message)
	}
	if !v.OK {
		return errCheckFailed
	}
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
