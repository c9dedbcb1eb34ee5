package failover

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/puddle/v2"
	"go.uber.org/zap"
)

// Pool is a writer-verified connection pool. It serves through one pgxpool
// "generation" at a time, pinned to the writer it verified. When the writer
// changes — a connection answers read-only, a new connection or a probe
// finds another server or a non-writer — the generation is retired at once
// (it hands out no more connections, its in-flight work finishes or fails)
// and a new one is built as soon as a writer answers through the endpoint.
// It is safe for concurrent use.
type Pool struct {
	cfg  *Config
	base *pgxpool.Config
	log  *zap.Logger

	mu         sync.Mutex
	cur        *generation   // serving generation; nil while rebuilding
	ready      chan struct{} // closed when cur is set
	changed    chan struct{} // closed when cur is retired
	gens       int64         // generations built
	last       Identity      // writer of the last generation
	lastErr    error         // why the last attempt to reach a writer failed
	rebuilding bool
	closed     bool

	aurora    atomic.Int32 // whether servers have aurora_db_instance_identifier (0 unknown, 1, 2)
	events    chan Event
	probeKick chan struct{}
	lastKick  atomic.Int64  // when an operation last kicked a probe (unix ns)
	kickGap   time.Duration // the least time between two kicked probes
	quit      chan struct{}
	wg        sync.WaitGroup // probe, emit and rebuild loops
	drains    sync.WaitGroup // drains of retired generations

	// afterServing, if set (by tests), runs after an operation picked its
	// generation and before it checks a connection out of it.
	afterServing func(*generation)
}

// generation is one pgxpool pinned to one writer.
type generation struct {
	n       int64
	pool    *pgxpool.Pool
	writer  Identity
	retired atomic.Bool // no more checkouts: stale or the pool closed
	stale   atomic.Bool // retired because its writer is stale: commits on it roll back
}

// New verifies that the endpoint in cfg.PoolConfig reaches a writer and
// returns a Pool serving it. It returns an error (wrapping *NoWriterError
// or the connection error) if no writer answers before ctx ends, and one
// matching ErrInvalidConfig for a bad configuration.
func New(ctx context.Context, cfg *Config) (*Pool, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	base := cfg.PoolConfig.Copy()
	if base.ConnConfig.ConnectTimeout == 0 {
		base.ConnConfig.ConnectTimeout = cfg.ConnectTimeout
	}
	if cfg.KeepAlive > 0 {
		// Keep-alive on every connection, set after it opens so that a
		// dialer of the user's own stays in place.
		userAfterNet := base.ConnConfig.AfterNetConnect
		period := cfg.KeepAlive
		base.ConnConfig.AfterNetConnect = func(ctx context.Context, cfg *pgconn.Config, conn net.Conn) (net.Conn, error) {
			if userAfterNet != nil {
				var err error
				if conn, err = userAfterNet(ctx, cfg, conn); err != nil {
					return nil, err
				}
			}
			if tcp, ok := conn.(*net.TCPConn); ok {
				_ = tcp.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: period, Interval: period, Count: 3})
			}
			return conn, nil
		}
	}
	p := &Pool{
		cfg:       cfg,
		base:      base,
		log:       cfg.Logger.Named("failover"),
		ready:     make(chan struct{}),
		changed:   make(chan struct{}),
		events:    make(chan Event, 256),
		probeKick: make(chan struct{}, 1),
		kickGap:   max(cfg.ProbeInterval/4, minKickGap),
		quit:      make(chan struct{}),
	}
	p.wg.Add(1)
	go p.emitLoop()

	g, err := p.buildUntil(ctx)
	if err != nil {
		p.shutdown()
		return nil, fmt.Errorf("failover: new pool: %w", err)
	}
	p.install(g)
	p.wg.Add(1)
	go p.probeLoop()
	return p, nil
}

// Close retires the current generation, stops probing and closes every
// connection, waiting for in-flight work. Operations after Close, and those
// waiting for a writer when it is called, return ErrClosed. A second Close
// is a no-op.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	g := p.cur
	p.cur = nil
	close(p.changed)
	// Watchers wake once for the close; after that there is nothing more
	// to watch, so later calls get a channel that never fires.
	p.changed = make(chan struct{})
	p.mu.Unlock()
	close(p.quit)
	if g != nil {
		g.retired.Store(true)
		g.pool.Close()
	}
	p.drains.Wait()
	p.shutdown()
}

func (p *Pool) shutdown() {
	select {
	case <-p.quit:
	default:
		close(p.quit)
	}
	p.wg.Wait()
}

// Generation returns how many generations have been built so far; the
// serving one is the latest.
func (p *Pool) Generation() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gens
}

// Writer returns the writer the serving generation is pinned to, and false
// while the pool is rebuilding.
func (p *Pool) Writer() (Identity, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur == nil {
		return Identity{}, false
	}
	return p.cur.writer, true
}

// WriterChanged returns a channel that is closed when the serving
// generation is retired (the writer changed or the pool closed). Call it
// again after that for the next change. The queue package's LISTEN
// connection uses it to follow the writer.
func (p *Pool) WriterChanged() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// Config returns a copy of the pool configuration generations are built
// from.
func (p *Pool) Config() *pgxpool.Config { return p.base.Copy() }

// current returns the serving generation, waiting for a rebuild up to
// WriterWait or ctx.
func (p *Pool) current(ctx context.Context) (*generation, error) {
	var timer *time.Timer
	start := time.Now()
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		g, ready, last := p.cur, p.ready, p.lastErr
		p.mu.Unlock()
		if g != nil {
			return g, nil
		}
		if timer == nil {
			timer = time.NewTimer(p.cfg.WriterWait)
			defer timer.Stop()
		}
		select {
		case <-ready:
		case <-p.quit:
			return nil, ErrClosed
		case <-ctx.Done():
			return nil, &NoWriterError{Waited: time.Since(start), Last: errors.Join(ctx.Err(), last)}
		case <-timer.C:
			return nil, &NoWriterError{Waited: time.Since(start), Last: last}
		}
	}
}

// serving returns the generation an operation runs on; see current.
func (p *Pool) serving(ctx context.Context) (*generation, error) {
	g, err := p.current(ctx)
	if err == nil && p.afterServing != nil {
		p.afterServing(g)
	}
	return g, err
}

// minKickGap is the least time between two probes kicked by operations'
// errors, whatever the ProbeInterval.
const minKickGap = 50 * time.Millisecond

// observe looks at an error that an operation under ctx got from
// generation g and acts on what it says.
func (p *Pool) observe(ctx context.Context, g *generation, err error) {
	switch c := Classify(err); {
	case c.StaleWriter():
		p.retire(g, err)
	case c == ClassShutdown || c == ClassConnection || c == ClassTimeout:
		if callerEnded(ctx, err) {
			return // the caller's own deadline or cancellation says nothing about the server
		}
		p.kick() // find out now whether the writer changed
	}
}

// callerEnded reports whether err is the caller's context ending rather
// than something the connection did (an i/o timeout is not).
func callerEnded(ctx context.Context, err error) bool {
	return ctx != nil && ctx.Err() != nil &&
		(errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))
}

// kick asks the probe loop for a probe now, at most once per kickGap, so a
// burst of failing operations opens one probe connection, not one each.
func (p *Pool) kick() {
	now := time.Now().UnixNano()
	last := p.lastKick.Load()
	if now-last < int64(p.kickGap) || !p.lastKick.CompareAndSwap(last, now) {
		return
	}
	wake(p.probeKick)
}

// retire takes g out of service, drains it and starts building the next
// generation. Only the first call for a generation does anything.
func (p *Pool) retire(g *generation, cause error) {
	p.mu.Lock()
	if p.cur != g || p.closed {
		p.mu.Unlock()
		return
	}
	g.stale.Store(true)
	g.retired.Store(true)
	p.cur = nil
	p.ready = make(chan struct{})
	close(p.changed)
	p.changed = make(chan struct{})
	startRebuild := !p.rebuilding
	p.rebuilding = true
	// Counted under the lock, before Close can see closed and wait, so
	// neither the drain nor the rebuild outlives Close.
	p.drains.Add(1)
	if startRebuild {
		p.wg.Add(1)
	}
	p.mu.Unlock()

	p.log.Warn("stale writer detected; retiring generation",
		zap.Int64("generation", g.n), zap.Stringer("writer", g.writer), zap.Error(cause),
		zap.String("class", Classify(cause).String()))
	p.emit(Event{Kind: EventStaleWriter, Generation: g.n, From: g.writer, Err: cause})
	go p.drain(g)
	if startRebuild {
		go p.rebuild()
	}
}

// drain closes a retired generation: idle connections at once, the rest as
// their work finishes or fails.
func (p *Pool) drain(g *generation) {
	defer p.drains.Done()
	p.emit(Event{Kind: EventDrainStarted, Generation: g.n, From: g.writer})
	start := time.Now()
	done := make(chan struct{})
	go func() {
		g.pool.Close() // waits for acquired connections to come back
		close(done)
	}()
	t := time.NewTimer(p.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		st := g.pool.Stat()
		p.log.Warn("retired generation still has work in flight; waiting for it to finish or fail",
			zap.Int64("generation", g.n), zap.Int32("connections_in_use", st.AcquiredConns()))
		<-done
	}
	p.log.Info("retired generation drained", zap.Int64("generation", g.n), zap.Duration("took", time.Since(start)))
	p.emit(Event{Kind: EventDrainDone, Generation: g.n, From: g.writer})
}

// rebuild builds generations until one is installed or the pool closes.
func (p *Pool) rebuild() {
	defer p.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-p.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	g, err := p.buildUntil(ctx)
	if err != nil {
		p.mu.Lock()
		p.rebuilding = false
		p.mu.Unlock()
		return // closed
	}
	p.install(g)
}

// buildUntil probes the endpoint until it answers as a writer, and returns
// a generation pinned to that writer. The first probe goes out at once;
// the next ones back off from RebuildBackoff/10 up to RebuildBackoff (never
// more, jitter included), so a writer that becomes reachable is used at
// most about RebuildBackoff later, and connection attempts stay at most
// about one per RebuildBackoff.
func (p *Pool) buildUntil(ctx context.Context) (*generation, error) {
	start := time.Now()
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = p.cfg.RebuildBackoff / 10
	bo.MaxInterval = p.cfg.RebuildBackoff
	bo.MaxElapsedTime = 0 // bounded by ctx only
	bo.Reset()
	for {
		role, id, err := p.probe(ctx)
		switch {
		case err != nil:
			p.setLastErr(err)
			p.emit(Event{Kind: EventProbeFailed, Generation: p.Generation(), Err: err})
		case !role.Writer():
			err = &StaleWriterError{Got: id, Reason: "endpoint reaches a " + role.String()}
			p.setLastErr(err)
			p.emit(Event{Kind: EventNoWriter, Generation: p.Generation(), To: id, Err: err})
		default:
			g, err := p.newGeneration(id)
			if err == nil {
				return g, nil
			}
			p.setLastErr(err)
		}
		t := time.NewTimer(min(bo.NextBackOff(), p.cfg.RebuildBackoff))
		select {
		case <-ctx.Done():
			t.Stop()
			p.mu.Lock()
			last := p.lastErr
			p.mu.Unlock()
			return nil, &NoWriterError{Waited: time.Since(start), Last: errors.Join(ctx.Err(), last)}
		case <-t.C:
		}
	}
}

func (p *Pool) setLastErr(err error) {
	p.mu.Lock()
	p.lastErr = err
	p.mu.Unlock()
}

// install makes g the serving generation.
func (p *Pool) install(g *generation) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		g.pool.Close()
		return
	}
	from := p.last
	p.cur = g
	p.last = g.writer
	p.lastErr = nil
	p.rebuilding = false
	close(p.ready)
	p.mu.Unlock()
	p.log.Info("generation ready", zap.Int64("generation", g.n), zap.Stringer("writer", g.writer), zap.Stringer("previous", from))
	p.emit(Event{Kind: EventGenerationReady, Generation: g.n, From: from, To: g.writer})
}

// newGeneration builds a pgxpool whose every new connection must reach
// writer, and nothing else.
func (p *Pool) newGeneration(writer Identity) (*generation, error) {
	p.mu.Lock()
	p.gens++
	g := &generation{n: p.gens, writer: writer}
	p.mu.Unlock()

	cfg := p.base.Copy()
	userAfterConnect := cfg.AfterConnect
	cfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		if userAfterConnect != nil {
			if err := userAfterConnect(ctx, conn); err != nil {
				return err
			}
		}
		return p.verify(ctx, conn, writer)
	}
	// The fence: once g is retired, no connection of it is handed out again,
	// whatever the caller already holds a reference to. It is a flag check,
	// not a query, so checkouts cost nothing extra.
	userPrepare, userBefore := cfg.PrepareConn, cfg.BeforeAcquire
	cfg.PrepareConn = func(ctx context.Context, conn *pgx.Conn) (bool, error) {
		if g.retired.Load() {
			return false, errRetired
		}
		switch {
		case userPrepare != nil:
			return userPrepare(ctx, conn)
		case userBefore != nil:
			return userBefore(ctx, conn), nil
		}
		return true, nil
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	g.pool = pool
	return g, nil
}

// errRetired is what a retired generation's checkouts fail with; the
// operation then moves to the next generation (nothing was sent).
var errRetired = errors.New("failover: generation retired")

// verify checks that conn reaches writer and that it takes writes.
func (p *Pool) verify(ctx context.Context, conn *pgx.Conn, writer Identity) error {
	role, id, err := checkRole(ctx, conn, &p.aurora)
	if err != nil {
		return fmt.Errorf("failover: role check: %w", err)
	}
	switch {
	case !role.Writer():
		return &StaleWriterError{Expected: writer, Got: id, Reason: "new connection reached a " + role.String()}
	case !writer.IsZero() && !id.Equal(writer):
		return &StaleWriterError{Expected: writer, Got: id, Reason: "new connection reached another server"}
	}
	return nil
}

// connConfig returns a copy of the endpoint's connection configuration for
// a connection outside the pgxpool, with the user's BeforeConnect run on it
// as pgxpool does for its own (it may set a fresh password or IAM token).
func (p *Pool) connConfig(ctx context.Context) (*pgx.ConnConfig, error) {
	cc := p.base.ConnConfig.Copy()
	if p.base.BeforeConnect != nil {
		if err := p.base.BeforeConnect(ctx, cc); err != nil {
			return nil, fmt.Errorf("failover: BeforeConnect: %w", err)
		}
	}
	return cc, nil
}

// probe opens a fresh connection to the endpoint (resolving its name anew)
// and asks who it is.
func (p *Pool) probe(ctx context.Context) (Role, Identity, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ProbeTimeout)
	defer cancel()
	cc, err := p.connConfig(ctx)
	if err != nil {
		return Role{}, Identity{}, err
	}
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return Role{}, Identity{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return checkRole(ctx, conn, &p.aurora)
}

// probeLoop checks the endpoint every ProbeInterval, and at once when an
// operation saw a connection problem, and retires the serving generation if
// the endpoint's writer is another server or its own writer was demoted.
func (p *Pool) probeLoop() {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.ProbeInterval)
	defer t.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-p.quit
		cancel()
	}()
	for {
		select {
		case <-p.quit:
			return
		case <-t.C:
		case <-p.probeKick:
		}
		p.mu.Lock()
		g := p.cur
		p.mu.Unlock()
		if g == nil {
			continue // a rebuild is probing already
		}
		role, id, err := p.probe(ctx)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			p.emit(Event{Kind: EventProbeFailed, Generation: g.n, From: g.writer, Err: err})
		case role.Writer() && !id.Equal(g.writer):
			p.retire(g, &StaleWriterError{Expected: g.writer, Got: id, Reason: "the endpoint's writer is another server"})
		case !role.Writer() && id.Equal(g.writer):
			p.retire(g, &StaleWriterError{Expected: g.writer, Got: id, Reason: "the pinned writer is now a " + role.String()})
		case !role.Writer():
			// The endpoint points at a non-writer, but our writer has not
			// been shown to be stale: its connections keep serving until an
			// error says otherwise.
			p.emit(Event{Kind: EventNoWriter, Generation: g.n, From: g.writer, To: id,
				Err: &StaleWriterError{Expected: g.writer, Got: id, Reason: "endpoint reaches a " + role.String()}})
		}
	}
}

func (p *Pool) emit(e Event) {
	if p.cfg.OnEvent == nil {
		return
	}
	e.At = time.Now()
	select {
	case p.events <- e:
	case <-p.quit:
	}
}

// emitLoop delivers events in order on one goroutine.
func (p *Pool) emitLoop() {
	defer p.wg.Done()
	for {
		select {
		case e := <-p.events:
			p.cfg.OnEvent(e)
		case <-p.quit:
			for {
				select {
				case e := <-p.events:
					p.cfg.OnEvent(e)
				default:
					return
				}
			}
		}
	}
}

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// raced reports whether err says an operation raced with its
// generation's retirement before sending anything: the checkout was fenced
// or the pgxpool already closed.
func raced(err error) bool {
	return errors.Is(err, errRetired) || errors.Is(err, puddle.ErrClosedPool)
}
