package failover

import (
	"context"
	"errors"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Exec runs sql on a connection to the verified writer. It waits for a
// rebuild to finish (see Config.WriterWait) and returns *NoWriterError if
// none does, or ErrClosed if the pool closes meanwhile. Errors that show
// the writer changed retire the generation, so the next call goes to the
// new writer. Exec does not retry a statement it sent: whether one may be
// repeated is the caller's call (see Class.Retryable). It only moves to
// the next generation when its checkout raced with a retirement, before
// anything was sent.
func (p *Pool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	g, conn, err := p.acquire(ctx)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	defer conn.Release()
	tag, err := conn.Exec(ctx, sql, args...)
	p.observe(ctx, g, err)
	return tag, err
}

// acquire checks a connection out of the serving generation. A checkout
// that fails because its generation was retired meanwhile (fenced, pool
// closed, or a connect cancelled by the close) sent nothing, so it moves
// on to the next generation.
func (p *Pool) acquire(ctx context.Context) (*generation, *pgxpool.Conn, error) {
	for {
		g, err := p.serving(ctx)
		if err != nil {
			return nil, nil, err
		}
		conn, err := g.pool.Acquire(ctx)
		if err == nil {
			return g, conn, nil
		}
		if raced(err) || g.retired.Load() && ctx.Err() == nil {
			continue
		}
		p.observe(ctx, g, err)
		return g, nil, err
	}
}

// Query runs sql on a connection to the verified writer; see Exec.
func (p *Pool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	g, conn, err := p.acquire(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		conn.Release()
		p.observe(ctx, g, err)
		return nil, err
	}
	return &observedRows{Rows: rows, p: p, g: g, ctx: ctx, conn: conn}, nil
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
// The connection goes back to the pool on Close, or, for a batch that
// begins a transaction (pgx.Batch.BeginTx), when that transaction ends.
func (p *Pool) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	g, conn, err := p.acquire(ctx)
	if err != nil {
		return pgx.FailedBatchResults(b, err)
	}
	br := conn.SendBatch(ctx, b)
	ob := &observedBatch{BatchResults: br, p: p, g: g, ctx: ctx}
	if tx := br.Tx(); tx != nil {
		// The transaction owns the connection, as in pgxpool.
		ob.tx = &observedTx{Tx: &releasingTx{Tx: tx, conn: conn}, p: p, g: g}
	} else {
		ob.conn = conn
	}
	return ob
}

// Begin starts a transaction on a connection to the verified writer; see
// Exec. If the generation is retired as stale before Commit, Commit rolls
// the transaction back and returns a *StaleWriterError: nothing is
// committed to a writer the pool has stopped trusting.
func (p *Pool) Begin(ctx context.Context) (pgx.Tx, error) {
	return p.BeginTx(ctx, pgx.TxOptions{})
}

// BeginTx starts a transaction with options; see Begin.
func (p *Pool) BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error) {
	g, conn, err := p.acquire(ctx)
	if err != nil {
		return nil, err
	}
	tx, err := conn.BeginTx(ctx, opts)
	if err != nil {
		conn.Release()
		p.observe(ctx, g, err)
		return nil, err
	}
	return &observedTx{Tx: &releasingTx{Tx: tx, conn: conn}, p: p, g: g}, nil
}

// Ping checks that a connection to the verified writer answers.
func (p *Pool) Ping(ctx context.Context) error {
	g, conn, err := p.acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	err = conn.Ping(ctx)
	p.observe(ctx, g, err)
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
// LISTEN. The pool configuration's BeforeConnect runs on its connection
// configuration first and its AfterConnect on the new connection, as for
// pooled connections. It is not part of the pool, so pool-level checks
// never see it: its user must reconnect when WriterChanged fires.
func (p *Pool) ConnectListener(ctx context.Context) (*pgx.Conn, error) {
	g, err := p.serving(ctx)
	if err != nil {
		return nil, err
	}
	cc, err := p.connConfig(ctx)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		p.observe(ctx, g, err)
		return nil, err
	}
	if p.base.AfterConnect != nil {
		if err := p.base.AfterConnect(ctx, conn); err != nil {
			_ = conn.Close(context.WithoutCancel(ctx))
			p.observe(ctx, g, err)
			return nil, err
		}
	}
	if err := p.verify(ctx, conn, g.writer); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		p.observe(ctx, g, err)
		return nil, err
	}
	return conn, nil
}

type observedRows struct {
	pgx.Rows
	p    *Pool
	g    *generation
	ctx  context.Context
	conn *pgxpool.Conn // released when the rows close, if the rows own it
}

// Next also closes the rows (giving the connection back) after the last
// row, as pgxpool's own rows do.
func (r *observedRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.Close()
	return false
}

func (r *observedRows) Close() {
	r.Rows.Close()
	if r.conn != nil {
		r.conn.Release()
		r.conn = nil
	}
	r.p.observe(r.ctx, r.g, r.Rows.Err())
}

func (r *observedRows) Err() error {
	err := r.Rows.Err()
	r.p.observe(r.ctx, r.g, err)
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
	p    *Pool
	g    *generation
	ctx  context.Context
	conn *pgxpool.Conn // released on Close, unless tx owns it
	tx   *observedTx   // the transaction the batch began, if any
}

func (b *observedBatch) Exec() (pgconn.CommandTag, error) {
	tag, err := b.BatchResults.Exec()
	b.p.observe(b.ctx, b.g, err)
	return tag, err
}

func (b *observedBatch) Query() (pgx.Rows, error) {
	rows, err := b.BatchResults.Query()
	b.p.observe(b.ctx, b.g, err)
	if err != nil {
		return rows, err
	}
	return &observedRows{Rows: rows, p: b.p, g: b.g, ctx: b.ctx}, nil
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
	b.p.observe(b.ctx, b.g, err)
	if b.conn != nil {
		b.conn.Release()
		b.conn = nil
	}
	return err
}

func (b *observedBatch) Tx() pgx.Tx {
	if b.tx == nil {
		return nil
	}
	return b.tx
}

// releasingTx is a transaction begun by a batch: it gives its pooled
// connection back when it ends, as pgxpool's own does.
type releasingTx struct {
	pgx.Tx
	conn *pgxpool.Conn
	once sync.Once
}

func (t *releasingTx) release() { t.once.Do(t.conn.Release) }

func (t *releasingTx) Commit(ctx context.Context) error {
	err := t.Tx.Commit(ctx)
	t.release()
	return err
}

func (t *releasingTx) Rollback(ctx context.Context) error {
	err := t.Tx.Rollback(ctx)
	t.release()
	return err
}

// observedTx is a transaction (or savepoint) on generation g whose every
// error is observed.
type observedTx struct {
	pgx.Tx
	p *Pool
	g *generation
}

func (t *observedTx) Begin(ctx context.Context) (pgx.Tx, error) {
	tx, err := t.Tx.Begin(ctx)
	t.p.observe(ctx, t.g, err)
	if err != nil {
		return nil, err
	}
	return &observedTx{Tx: tx, p: t.p, g: t.g}, nil
}

func (t *observedTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tag, err := t.Tx.Exec(ctx, sql, args...)
	t.p.observe(ctx, t.g, err)
	return tag, err
}

func (t *observedTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	rows, err := t.Tx.Query(ctx, sql, args...)
	t.p.observe(ctx, t.g, err)
	if err != nil {
		return rows, err
	}
	return &observedRows{Rows: rows, p: t.p, g: t.g, ctx: ctx}, nil
}

func (t *observedTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	rows, err := t.Query(ctx, sql, args...)
	if err != nil {
		return errRow{err}
	}
	return (*observedRow)(rows.(*observedRows))
}

func (t *observedTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return &observedBatch{BatchResults: t.Tx.SendBatch(ctx, b), p: t.p, g: t.g, ctx: ctx}
}

func (t *observedTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, rows pgx.CopyFromSource) (int64, error) {
	n, err := t.Tx.CopyFrom(ctx, table, columns, rows)
	t.p.observe(ctx, t.g, err)
	return n, err
}

func (t *observedTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	sd, err := t.Tx.Prepare(ctx, name, sql)
	t.p.observe(ctx, t.g, err)
	return sd, err
}

// Commit commits the transaction, unless its generation was retired as
// stale meanwhile: then it rolls back and returns a *StaleWriterError, so
// nothing reaches a writer the pool has stopped trusting (Classify gives
// ClassStaleWriter, which is Retryable). A retirement racing with the
// COMMIT itself can still let that one commit through.
func (t *observedTx) Commit(ctx context.Context) error {
	if t.g.stale.Load() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.p.cfg.ProbeTimeout)
		defer cancel()
		if err := t.Tx.Rollback(rctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
			t.p.observe(rctx, t.g, err)
		}
		return &StaleWriterError{Expected: t.g.writer,
			Reason: "the generation was retired before commit; the transaction was rolled back"}
	}
	err := t.Tx.Commit(ctx)
	if !errors.Is(err, pgx.ErrTxClosed) {
		t.p.observe(ctx, t.g, err)
	}
	return err
}

func (t *observedTx) Rollback(ctx context.Context) error {
	err := t.Tx.Rollback(ctx)
	if !errors.Is(err, pgx.ErrTxClosed) {
		t.p.observe(ctx, t.g, err)
	}
	return err
}

// CopyFrom copies rows into a table on a connection to the verified
// writer (one COPY statement: all rows or none); see Exec.
func (p *Pool) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, rows pgx.CopyFromSource) (int64, error) {
	g, conn, err := p.acquire(ctx)
	if err != nil {
		return 0, err // nothing was sent: the rows source was not read
	}
	defer conn.Release()
	n, err := conn.CopyFrom(ctx, table, columns, rows)
	p.observe(ctx, g, err)
	return n, err
}
