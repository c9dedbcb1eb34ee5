package migrations

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/skiplock/skiplock/internal/sqlident"
)

// SchemaDefault is the schema skiplock's tables live in unless configured
// otherwise.
const SchemaDefault = "skiplock"

// ErrInvalidSchema is returned (wrapped, with the reason) by [New] for a
// schema name PostgreSQL would reject or truncate. Hostile names such as
// `x"; drop table y; --` are not errors: they are quoted and used as-is.
var ErrInvalidSchema = errors.New("migrations: invalid schema name")

// ErrUnknownVersion is returned by [Migrator.Down] when the database holds a
// version this binary does not know, so it cannot revert it.
var ErrUnknownVersion = errors.New("migrations: database has a version this binary does not know")

// DB is what a [Migrator] needs: something that begins transactions. A
// *pgxpool.Pool, *pgx.Conn and *pgxpool.Conn all satisfy it.
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Config configures a [Migrator]. A nil *Config means all defaults.
type Config struct {
	// Schema is the schema the tables are created in; it is created if it
	// does not exist. Defaults to SchemaDefault.
	Schema string
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c *Config) WithDefaults() *Config {
	out := Config{}
	if c != nil {
		out = *c
	}
	if out.Schema == "" {
		out.Schema = SchemaDefault
	}
	return &out
}

func (c *Config) validate() error {
	if _, err := sqlident.Schema(c.Schema); err != nil {
		return fmt.Errorf("%w: Schema %q: %w", ErrInvalidSchema, truncate(c.Schema), err)
	}
	return nil
}

// Migrator applies and reverts the embedded migrations in one schema.
// It is safe for concurrent use, also across processes.
type Migrator struct {
	db     DB
	schema string // as configured
	quoted string // quoted for SQL text
}

// New returns a Migrator for db. It does not touch the database. It returns
// an error wrapping ErrInvalidSchema when the schema name is unusable.
func New(db DB, cfg *Config) (*Migrator, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if db == nil {
		return nil, errors.New("migrations: nil DB")
	}
	quoted, _ := sqlident.Schema(cfg.Schema)
	return &Migrator{db: db, schema: cfg.Schema, quoted: quoted}, nil
}

// Result reports what a call to Up or Down changed.
type Result struct {
	Applied  []int // versions applied by this call, in order
	Reverted []int // versions reverted by this call, in order
	Version  int   // the schema version when the call returned
}

// Status describes one version as the database sees it.
type Status struct {
	Version   int
	Name      string    // empty for a version this binary does not know
	Applied   bool      // recorded in the database
	AppliedAt time.Time // zero unless Applied
	Known     bool      // embedded in this binary
}

// Up applies every embedded version the database does not have yet. Each
// version runs in its own transaction under a transaction-scoped advisory
// lock, so concurrent callers (in any process) wait for each other and each
// version is applied exactly once; a caller that finds a version already
// applied skips it. Up blocks while another migrator holds the lock; bound it
// with ctx. On error, versions applied before the failing one stay applied.
func (m *Migrator) Up(ctx context.Context) (*Result, error) {
	res := &Result{}
	for _, mig := range all {
		applied, version, err := m.step(ctx, mig, true)
		if err != nil {
			return res, err
		}
		res.Version = version
		if applied {
			res.Applied = append(res.Applied, mig.Version)
		}
	}
	return res, nil
}

// Down reverts applied versions above to, newest first, each in its own
// locked transaction. Down(ctx, 0) removes every table skiplock created (the
// schema and the version table remain). It returns ErrUnknownVersion, and
// changes nothing, if the database holds a version newer than this binary
// knows.
func (m *Migrator) Down(ctx context.Context, to int) (*Result, error) {
	if to < 0 || to > Latest() {
		return nil, fmt.Errorf("migrations: down to %d: version must be between 0 and %d", to, Latest())
	}
	res := &Result{}
	for i := len(all) - 1; i >= 0 && all[i].Version > to; i-- {
		reverted, version, err := m.step(ctx, all[i], false)
		if err != nil {
			return res, err
		}
		res.Version = version
		if reverted {
			res.Reverted = append(res.Reverted, all[i].Version)
		}
	}
	if res.Reverted == nil {
		v, err := m.Version(ctx)
		if err != nil {
			return res, err
		}
		res.Version = v
	}
	return res, nil
}

// Version returns the highest applied version, 0 if none.
func (m *Migrator) Version(ctx context.Context) (int, error) {
	st, err := m.Status(ctx)
	if err != nil {
		return 0, err
	}
	v := 0
	for _, s := range st {
		if s.Applied && s.Version > v {
			v = s.Version
		}
	}
	return v, nil
}

// Status lists every embedded version and every version recorded in the
// database, in version order. It takes no lock and changes nothing; a schema
// that does not exist yet reports every version as not applied.
func (m *Migrator) Status(ctx context.Context) ([]Status, error) {
	tx, err := m.db.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrations: status: %w", err)
	}
	defer rollback(ctx, tx)

	recorded := map[int]time.Time{}
	var exists bool
	err = tx.QueryRow(ctx, sqlVersionTableExists, m.schema).Scan(&exists)
	if err != nil {
		return nil, fmt.Errorf("migrations: status: %w", err)
	}
	if exists {
		rows, err := tx.Query(ctx, m.sql(sqlListVersions))
		if err != nil {
			return nil, fmt.Errorf("migrations: status: %w", err)
		}
		for rows.Next() {
			var v int
			var at time.Time
			if err := rows.Scan(&v, &at); err != nil {
				rows.Close()
				return nil, fmt.Errorf("migrations: status: %w", err)
			}
			recorded[v] = at
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("migrations: status: %w", err)
		}
	}

	var out []Status
	for _, mig := range all {
		at, ok := recorded[mig.Version]
		out = append(out, Status{Version: mig.Version, Name: mig.Name, Applied: ok, AppliedAt: at, Known: true})
		delete(recorded, mig.Version)
	}
	for v, at := range recorded {
		out = append(out, Status{Version: v, Applied: true, AppliedAt: at})
	}
	sortStatus(out)
	return out, nil
}

// step applies (up) or reverts (down) one version in its own transaction
// under the schema's advisory lock. It reports whether it changed anything
// and the schema version afterwards.
func (m *Migrator) step(ctx context.Context, mig Migration, up bool) (changed bool, version int, err error) {
	op := "up"
	if !up {
		op = "down"
	}
	wrap := func(err error) error {
		return fmt.Errorf("migrations: %s %d (%s) in schema %q: %w", op, mig.Version, mig.Name, truncate(m.schema), err)
	}

	tx, err := m.db.Begin(ctx)
	if err != nil {
		return false, 0, wrap(err)
	}
	defer rollback(ctx, tx)

	// The lock is released with the transaction, so a migrator that dies
	// mid-way never leaves it held.
	if _, err := tx.Exec(ctx, sqlLock, m.schema); err != nil {
		return false, 0, wrap(err)
	}
	if _, err := tx.Exec(ctx, m.sql(sqlPrepare), pgx.QueryExecModeSimpleProtocol); err != nil {
		return false, 0, wrap(err)
	}
	if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+m.quoted); err != nil {
		return false, 0, wrap(err)
	}

	var current int
	var has bool
	if err := tx.QueryRow(ctx, m.sql(sqlCurrent), mig.Version).Scan(&current, &has); err != nil {
		return false, 0, wrap(err)
	}
	maxKnown := Latest()

	switch {
	case up && has:
		return false, current, nil
	case !up && current > maxKnown:
		return false, current, wrap(fmt.Errorf("%w: database is at %d, this binary knows up to %d", ErrUnknownVersion, current, maxKnown))
	case !up && !has:
		return false, current, nil
	}

	body := mig.Up
	if !up {
		body = mig.Down
	}
	// Simple protocol: a migration file holds several statements.
	if _, err := tx.Exec(ctx, body, pgx.QueryExecModeSimpleProtocol); err != nil {
		return false, 0, wrap(err)
	}
	if up {
		_, err = tx.Exec(ctx, m.sql(sqlRecord), mig.Version, mig.Name)
	} else {
		_, err = tx.Exec(ctx, m.sql(sqlForget), mig.Version)
	}
	if err != nil {
		return false, 0, wrap(err)
	}
	if err := tx.QueryRow(ctx, m.sql(sqlCurrent), mig.Version).Scan(&current, &has); err != nil {
		return false, 0, wrap(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, 0, wrap(err)
	}
	return true, current, nil
}

func rollback(ctx context.Context, tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = tx.Rollback(ctx) // after Commit this is a no-op
}

func truncate(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}
