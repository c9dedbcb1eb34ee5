package harness

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// meter measures what one phase of work costs on the server and in this
// process: WAL bytes (the difference of the WAL insert position around the
// phase, so everything the server logged meanwhile counts, background
// processes included), CPU (see cpuNow) and wall time. It also counts the
// checkpoints that began meanwhile: a phase that spans one pays full-page
// images for the first change of every page after it.
type meter struct {
	lsn         string
	cpu         cpuUse
	at          time.Time
	checkpoints int64
}

// usage is what a meter measured.
type usage struct {
	walBytes    int64
	cpu         cpuUse
	elapsed     time.Duration
	checkpoints int64  // -1 when the server does not say
	from, to    string // the WAL positions around the phase
}

// sqlCheckpoints reads the checkpoint count through to_jsonb, so that a
// server whose pg_stat_bgwriter lacks the columns (PostgreSQL 17 moved them)
// yields -1 instead of an error.
const sqlCheckpoints = `SELECT coalesce((to_jsonb(b)->>'checkpoints_timed')::int8 + (to_jsonb(b)->>'checkpoints_req')::int8, -1)
FROM pg_stat_bgwriter b`

func (e *env) startMeter(ctx context.Context) (meter, error) {
	var m meter
	if err := e.pool.QueryRow(ctx, sqlCheckpoints).Scan(&m.checkpoints); err != nil {
		return m, fmt.Errorf("checkpoint count: %w", err)
	}
	m.cpu, m.at = e.cpuNow(), time.Now()
	if err := e.pool.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&m.lsn); err != nil {
		return m, fmt.Errorf("WAL position: %w", err)
	}
	return m, nil
}

func (e *env) stopMeter(ctx context.Context, m meter) (usage, error) {
	u := usage{from: m.lsn}
	if err := e.pool.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text, pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::text::pg_lsn)::int8`,
		m.lsn).Scan(&u.to, &u.walBytes); err != nil {
		return u, fmt.Errorf("WAL position: %w", err)
	}
	u.elapsed, u.cpu = time.Since(m.at), e.cpuNow().sub(m.cpu)
	var ck int64
	if err := e.pool.QueryRow(ctx, sqlCheckpoints).Scan(&ck); err != nil {
		return u, fmt.Errorf("checkpoint count: %w", err)
	}
	u.checkpoints = -1
	if ck >= 0 && m.checkpoints >= 0 {
		u.checkpoints = ck - m.checkpoints
	}
	return u, nil
}

// walRecordStat is the WAL of one resource manager and record type within
// a range, as pg_walinspect counts it.
type walRecordStat struct {
	record string // "Heap/INSERT", "Btree/INSERT_LEAF", ...
	count  int64
	bytes  int64 // record and full-page images together
	fpi    int64 // of bytes, full-page images
}

// errNoWalinspect means the server cannot load pg_walinspect.
var errNoWalinspect = errors.New("pg_walinspect is not available")

// walinspect makes sure pg_walinspect is installed (in the harness's
// schema, so that dropping the schema removes it) and returns its schema,
// quoted. It needs a role that may create the extension.
func (e *env) walinspect(ctx context.Context) (string, error) {
	var avail bool
	if err := e.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_walinspect')`).Scan(&avail); err != nil {
		return "", err
	}
	if !avail {
		return "", errNoWalinspect
	}
	if err := e.exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_walinspect SCHEMA `+pgx.Identifier{skiplockSchema}.Sanitize()); err != nil {
		return "", fmt.Errorf("%w: %v", errNoWalinspect, err)
	}
	var schema string
	if err := e.pool.QueryRow(ctx, `SELECT n.nspname FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace WHERE x.extname = 'pg_walinspect'`).Scan(&schema); err != nil {
		return "", err
	}
	return pgx.Identifier{schema}.Sanitize(), nil
}

// walStats breaks the WAL between from and to down by record type, largest
// first. The end is clamped to what the server has flushed (pg_walinspect
// reads no further).
func (e *env) walStats(ctx context.Context, schema, from, to string) ([]walRecordStat, error) {
	rows, err := e.pool.Query(ctx, `SELECT "resource_manager/record_type", count, combined_size, fpi_size
FROM `+schema+`.pg_get_wal_stats($1::text::pg_lsn, least($2::text::pg_lsn, pg_current_wal_flush_lsn()), true)
WHERE count > 0 ORDER BY combined_size DESC`, from, to)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (walRecordStat, error) {
		var s walRecordStat
		err := r.Scan(&s.record, &s.count, &s.bytes, &s.fpi)
		return s, err
	})
}

// checkpoint forces a checkpoint: every page's next change then writes a
// full-page image (as it does for rows changed long after they were written).
func (e *env) checkpoint(ctx context.Context) error {
	if err := e.exec(ctx, `CHECKPOINT`); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}
