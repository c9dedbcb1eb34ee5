package faultlab

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
)

// SchemaDefault is the schema the cluster migrates and the load uses.
const SchemaDefault = "skiplock"

// ClusterConfig configures StartCluster. A nil *ClusterConfig means all defaults.
type ClusterConfig struct {
	// Schema is migrated on the primary. Defaults to SchemaDefault.
	Schema string
	// Options are the servers' options (PasswordRoles for rotating credentials). Defaults to
	// nil.
	Options *pgtest.Options
	// Logf receives progress lines of faults. Defaults to none.
	Logf func(format string, args ...any)
}

// Cluster is a primary and a streaming replica behind a pgtest.Proxy that stands in for the
// cluster endpoint. Nodes keep their index; the roles move between them (Writer, Replica).
// Every fault leaves it in the same shape: one writer behind the endpoint, one streaming
// replica of it.
type Cluster struct {
	Nodes  [2]*pgtest.Server
	Proxy  *pgtest.Proxy
	Schema string

	logf   func(format string, args ...any)
	direct [2]*pgxpool.Pool

	mu     sync.Mutex
	writer int
	events []failover.Event
	pools  []*failover.Pool
	creds  *credentials
}

// StartCluster starts a primary, a streaming replica and the proxy (pointing at the primary),
// and migrates the schema. It blocks until all are up (at most a few minutes, or until ctx
// ends). Close it when done.
func StartCluster(ctx context.Context, cfg *ClusterConfig) (_ *Cluster, err error) {
	var c0 ClusterConfig
	if cfg != nil {
		c0 = *cfg
	}
	if c0.Schema == "" {
		c0.Schema = SchemaDefault
	}
	if c0.Logf == nil {
		c0.Logf = func(string, ...any) {}
	}
	c := &Cluster{Schema: c0.Schema, logf: c0.Logf}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if c.Nodes[0], err = pgtest.StartPrimary(ctx, c0.Options); err != nil {
		return nil, err
	}
	if c.Nodes[1], err = c.Nodes[0].StartReplica(ctx, c0.Options); err != nil {
		return nil, err
	}
	if c.Proxy, err = pgtest.NewProxy(c.Addr(0)); err != nil {
		return nil, err
	}
	for i := range c.Nodes {
		pc, err := pgxpool.ParseConfig(c.Nodes[i].ConnString("postgres"))
		if err != nil {
			return nil, err
		}
		pc.MaxConns = 4
		pc.ConnConfig.ConnectTimeout = 5 * time.Second
		// A terminate_backends fault kills these connections too: check each one
		// as it is taken, so the harness's next query gets a live one.
		pc.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return true }
		if c.direct[i], err = pgxpool.NewWithConfig(ctx, pc); err != nil {
			return nil, err
		}
	}
	m, err := migrations.New(c.direct[0], &migrations.Config{Schema: c.Schema})
	if err != nil {
		return nil, err
	}
	if _, err := m.Up(ctx); err != nil {
		return nil, fmt.Errorf("faultlab: migrate: %w", err)
	}
	return c, nil
}

// Close closes the pools made by NewPool, the direct pools, the proxy and the servers.
func (c *Cluster) Close() {
	c.mu.Lock()
	pools := c.pools
	c.pools = nil
	c.mu.Unlock()
	for _, p := range pools {
		p.Close()
	}
	for _, p := range c.direct {
		if p != nil {
			p.Close()
		}
	}
	if c.Proxy != nil {
		_ = c.Proxy.Close()
	}
	for i := len(c.Nodes) - 1; i >= 0; i-- {
		if c.Nodes[i] != nil {
			_ = c.Nodes[i].Close()
		}
	}
}

// Addr returns node i's "host:port".
func (c *Cluster) Addr(i int) string {
	return net.JoinHostPort(c.Nodes[i].Host(), strconv.Itoa(c.Nodes[i].Port()))
}

// Direct returns a plain pool to node i, bypassing the endpoint (at most 4 connections).
func (c *Cluster) Direct(i int) *pgxpool.Pool { return c.direct[i] }

// Writer returns the index of the node that is the writer behind the endpoint, as the faults
// left it.
func (c *Cluster) Writer() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writer
}

// Replica returns the index of the other node.
func (c *Cluster) Replica() int { return 1 - c.Writer() }

func (c *Cluster) setWriter(i int) {
	c.mu.Lock()
	c.writer = i
	c.mu.Unlock()
}

// PoolConfig returns the endpoint's pgx configuration with MaxConns 16.
func (c *Cluster) PoolConfig() (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(c.Proxy.ConnString("postgres"))
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 16
	if cr := c.credentials(); cr != nil {
		cfg.ConnConfig.User = cr.role
		cfg.BeforeConnect = func(ctx context.Context, cc *pgx.ConnConfig) error {
			cc.User = cr.role
			cc.Password = c.Password()
			return nil
		}
	}
	return cfg, nil
}

// NewPool returns a failover pool on the endpoint with short probe and rebuild intervals that
// records its events (Events); edit, if set, changes its configuration first. The cluster
// closes it on Close.
func (c *Cluster) NewPool(ctx context.Context, edit func(*failover.Config)) (*failover.Pool, error) {
	pc, err := c.PoolConfig()
	if err != nil {
		return nil, err
	}
	cfg := &failover.Config{
		PoolConfig:     pc,
		ProbeInterval:  250 * time.Millisecond,
		RebuildBackoff: 200 * time.Millisecond,
	}
	if edit != nil {
		edit(cfg)
	}
	user := cfg.OnEvent
	cfg.OnEvent = func(e failover.Event) {
		c.mu.Lock()
		c.events = append(c.events, e)
		c.mu.Unlock()
		if user != nil {
			user(e)
		}
	}
	p, err := failover.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.pools = append(c.pools, p)
	c.mu.Unlock()
	return p, nil
}

// Events returns the events of kind recorded by the pools of NewPool.
func (c *Cluster) Events(kind failover.EventKind) []failover.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []failover.Event
	for _, e := range c.events {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// StaleDetectedAfter returns when a pool first reported a generation on node i stale at or
// after t0.
func (c *Cluster) StaleDetectedAfter(i int, t0 time.Time) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.events {
		if e.Kind == failover.EventStaleWriter && e.From.Port == c.Nodes[i].Port() && !e.At.Before(t0) {
			return e.At, true
		}
	}
	return time.Time{}, false
}

// WaitCaughtUp waits until node r has replayed what node p has written (at most 30 s).
func (c *Cluster) WaitCaughtUp(ctx context.Context, p, r int) error {
	var lsn string
	err := retryKilled(ctx, func() error {
		return c.direct[p].QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn)
	})
	if err != nil {
		return fmt.Errorf("faultlab: WAL position of node %d: %w", p, err)
	}
	return poll(ctx, 30*time.Second, "node "+strconv.Itoa(r)+" to catch up", func() (bool, error) {
		var ok bool
		err := retryKilled(ctx, func() error {
			return c.direct[r].QueryRow(ctx, `SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)`, lsn).Scan(&ok)
		})
		return ok, err
	})
}

// retryKilled runs f again (up to three times in all) when it failed because its connection
// was killed under it, as a terminate_backends fault overlapping a topology fault does.
func retryKilled(ctx context.Context, f func() error) error {
	var err error
	for range 3 {
		if err = f(); err == nil || !connKilled(err) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// connKilled reports whether err says the connection was terminated or lost (the
// failover classifier's shutdown and connection classes).
func connKilled(err error) bool {
	c := failover.Classify(err)
	return c == failover.ClassShutdown || c == failover.ClassConnection
}

// poll checks cond every 10ms until it holds, fails, or d (or ctx) ends.
func poll(ctx context.Context, d time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("faultlab: waiting for %s: %w", what, ctx.Err())
		case <-deadline.C:
			return fmt.Errorf("faultlab: timed out after %s waiting for %s", d, what)
		case <-tick.C:
		}
	}
}

// pause lets the schedule's own pacing pass (a fault's window, not a readiness wait).
func pause(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
