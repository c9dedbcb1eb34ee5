package failover

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Exec runs sql on a connection to the verified writer. It waits for a
// rebuild to finish (see Config.WriterWait) and returns *NoWriterError if
// none does. Errors that show the writer changed retire the generation, so
// the next call goes to the new writer. Exec does not retry: whether a
// statement may be repeated is the caller's call.
func (p *Pool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	for {
		g, err := p.current(ctx)
		if err != nil {
			return pgconn.CommandTag{}, err
		}
		tag, err := g.pool.Exec(ctx, sql, args...)
		if err != nil && raced(err) {
			continue // raced with retirement before anything was sent
		}
		p.observe(g, err)
		return tag, err
	}
}

// Query runs sql on a connection to the verified writer; see Exec.
func (p *Pool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	for {
		g, err := p.current(ctx)
		if err != nil {
			return nil, err
		}
		rows, err := g.pool.Query(ctx, sql, args...)
		if err != nil {
			if raced(err) {
				continue
			}
			p.observe(g, err)
			return nil, err
		}
		return &observedRows{Rows: rows, p: p, g: g}, nil
	}
}

// QueryRow runs sql on a connection to the verified writer; see Exec.
func (p *Pool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	rows, err := p.Query(ctx, sql, args...)
	if err != nil {
		return errRow{err}
	}
	return (*observedRow)(rows.(*observedRows))
}

// SendBatch sends b on one connection to the verified writer; see Exec.
func (p *Pool) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	g, err := p.current(ctx)
	if err != nil {
		return errBatch{err}
	}
	return &observedBatch{BatchResults: g.pool.SendBatch(ctx, b), p: p, g: g}
}

// Begin starts a transaction on a connection to the verified writer; see
// Exec.
func (p *Pool) Begin(ctx context.Context) (pgx.Tx, error) {
	return p.BeginTx(ctx, pgx.TxOptions{})
}

// BeginTx starts a transaction with options; see Begin.
func (p *Pool) BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error) {
	for {
		g, err := p.current(ctx)
		if err != nil {
			return nil, err
		}
		tx, err := g.pool.BeginTx(ctx, opts)
		if err != nil {
			if raced(err) {
				continue
			}
			p.observe(g, err)
			return nil, err
		}
		return &observedTx{Tx: tx, p: p, g: g}, nil
	}
}

// Ping checks that a connection to the verified writer answers.
func (p *Pool) Ping(ctx context.Context) error {
	g, err := p.current(ctx)
	if err != nil {
		return err
	}
	err = g.pool.Ping(ctx)
	p.observe(g, err)
	return err
}

// Stat returns the serving generation's pgxpool statistics, or nil while
// the pool is rebuilding.
func (p *Pool) Stat() *pgxpool.Stat {
	p.mu.Lock()
	g := p.cur
	p.mu.Unlock()
	if g == nil {
		return nil
	}
	return g.pool.Stat()
}

// ConnectListener opens a dedicated connection to the verified writer, for
// LISTEN. It is not part of the pool, so pool-level checks never see it:
// its user must reconnect when WriterChanged fires.
func (p *Pool) ConnectListener(ctx context.Context) (*pgx.Conn, error) {
	g, err := p.current(ctx)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, p.base.ConnConfig.Copy())
	if err != nil {
		p.observe(g, err)
		return nil, err
	}
	if err := p.verify(ctx, conn, g.writer); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		p.observe(g, err)
		return nil, err
	}
	return conn, nil
}

type observedRows struct {
	pgx.Rows
	p *Pool
	g *generation
}

func (r *observedRows) Close() {
	r.Rows.Close()
	r.p.observe(r.g, r.Rows.Err())
}

func (r *observedRows) Err() error {
	err := r.Rows.Err()
	r.p.observe(r.g, err)
	return err
}

// observedRow is QueryRow's result: the first row of the rows.
type observedRow observedRows

func (r *observedRow) Scan(dest ...any) error {
	rows := (*observedRows)(r)
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := rows.Scan(dest...); err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type observedBatch struct {
	pgx.BatchResults
	p *Pool
	g *generation
}

func (b *observedBatch) Exec() (pgconn.CommandTag, error) {
	tag, err := b.BatchResults.Exec()
	b.p.observe(b.g, err)
	return tag, err
}

func (b *observedBatch) Query() (pgx.Rows, error) {
	rows, err := b.BatchResults.Query()
	b.p.observe(b.g, err)
	if err != nil {
		return rows, err
	}
	return &observedRows{Rows: rows, p: b.p, g: b.g}, nil
}

func (b *observedBatch) QueryRow() pgx.Row {
	rows, err := b.Query()
	if err != nil {
		return errRow{err}
	}
	return (*observedRow)(rows.(*observedRows))
}

func (b *observedBatch) Close() error {
	err := b.BatchResults.Close()
	b.p.observe(b.g, err)
	return err
}

type errBatch struct{ err error }

func (b errBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, b.err }
func (b errBatch) Query() (pgx.Rows, error)         { return nil, b.err }
func (b errBatch) QueryRow() pgx.Row                { return errRow{b.err} }
func (b errBatch) Close() error                     { return b.err }
func (b errBatch) Tx() pgx.Tx                       { return nil }

type observedTx struct {
	pgx.Tx
	p *Pool
	g *generation
}

func (t *observedTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tag, err := t.Tx.Exec(ctx, sql, args...)
	t.p.observe(t.g, err)
	return tag, err
}

func (t *observedTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	rows, err := t.Tx.Query(ctx, sql, args...)
	t.p.observe(t.g, err)
	if err != nil {
		return rows, err
	}
	return &observedRows{Rows: rows, p: t.p, g: t.g}, nil
}

func (t *observedTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	rows, err := t.Query(ctx, sql, args...)
	if err != nil {
		return errRow{err}
	}
	return (*observedRow)(rows.(*observedRows))
}

func (t *observedTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return &observedBatch{BatchResults: t.Tx.SendBatch(ctx, b), p: t.p, g: t.g}
}

func (t *observedTx) Commit(ctx context.Context) error {
	err := t.Tx.Commit(ctx)
	if !errors.Is(err, pgx.ErrTxClosed) {
		t.p.observe(t.g, err)
	}
	return err
}

// CopyFrom copies rows into a table on a connection to the verified
// writer (one COPY statement: all rows or none); see Exec.
func (p *Pool) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, rows pgx.CopyFromSource) (int64, error) {
	for {
		g, err := p.current(ctx)
		if err != nil {
			return 0, err
		}
		n, err := g.pool.CopyFrom(ctx, table, columns, rows)
		if err != nil && raced(err) {
			continue // nothing was sent: the rows source was not read
		}
		p.observe(g, err)
		return n, err
	}
}
