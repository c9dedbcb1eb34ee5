package failover_test

import (
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
)

// cluster is a primary and a streaming replica behind a proxy that stands
// in for the cluster endpoint.
type cluster struct {
	t      testing.TB
	nodes  [2]*pgtest.Server
	proxy  *pgtest.Proxy
	schema string

	mu     sync.Mutex
	events []failover.Event
}

const testSchema = "skiplock"

func newCluster(t testing.TB) *cluster {
	t.Helper()
	a, b := pgtest.NewPair(t, nil)
	c := &cluster{t: t, nodes: [2]*pgtest.Server{a, b}, schema: testSchema}
	c.proxy = pgtest.NewTestProxy(t, c.addr(0))
	pool := c.direct(0)
	m, err := migrations.New(pool, &migrations.Config{Schema: c.schema})
	require.NoError(t, err)
	_, err = m.Up(ctxFor(t, time.Minute))
	require.NoError(t, err)
	return c
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func (c *cluster) addr(i int) string {
	return net.JoinHostPort(c.nodes[i].Host(), strconv.Itoa(c.nodes[i].Port()))
}

// direct returns a plain pool to node i, bypassing the endpoint.
func (c *cluster) direct(i int) *pgxpool.Pool {
	c.t.Helper()
	pool, err := pgxpool.New(context.Background(), c.nodes[i].ConnString("postgres"))
	require.NoError(c.t, err)
	c.t.Cleanup(pool.Close)
	return pool
}

// poolConfig is the endpoint's pgx configuration.
func (c *cluster) poolConfig() *pgxpool.Config {
	cfg, err := pgxpool.ParseConfig(c.proxy.ConnString("postgres"))
	require.NoError(c.t, err)
	cfg.MaxConns = 16
	return cfg
}

func testLogger(t testing.TB) *zap.Logger {
	if testing.Verbose() {
		return zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	}
	return zap.NewNop()
}

// newPool returns a failover pool on the endpoint that records its events.
func (c *cluster) newPool(edit func(*failover.Config)) *failover.Pool {
	c.t.Helper()
	cfg := &failover.Config{
		PoolConfig:     c.poolConfig(),
		Logger:         testLogger(c.t),
		ProbeInterval:  250 * time.Millisecond,
		RebuildBackoff: 200 * time.Millisecond,
		OnEvent: func(e failover.Event) {
			c.mu.Lock()
			c.events = append(c.events, e)
			c.mu.Unlock()
		},
	}
	if edit != nil {
		edit(cfg)
	}
	p, err := failover.New(ctxFor(c.t, 30*time.Second), cfg)
	require.NoError(c.t, err)
	c.t.Cleanup(p.Close)
	return p
}

func (c *cluster) eventsOf(kind failover.EventKind) []failover.Event {
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

// identity returns node i's identity as the failover package sees it.
func (c *cluster) identity(i int) failover.Identity {
	c.t.Helper()
	conn, err := pgx.Connect(context.Background(), c.nodes[i].ConnString("postgres"))
	require.NoError(c.t, err)
	defer conn.Close(context.Background())
	var id failover.Identity
	require.NoError(c.t, conn.QueryRow(context.Background(),
		`SELECT coalesce(host(inet_server_addr()), ''), coalesce(inet_server_port(), 0), pg_postmaster_start_time()`).
		Scan(&id.Addr, &id.Port, &id.Started))
	return id
}

// waitCaughtUp waits until replica r has replayed everything primary p has
// written, as a planned failover does before promoting.
func (c *cluster) waitCaughtUp(p, r int) {
	c.t.Helper()
	ctx := ctxFor(c.t, 30*time.Second)
	var lsn string
	require.NoError(c.t, c.direct(p).QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn))
	rp := c.direct(r)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var ok bool
		require.NoError(c.t, rp.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&ok))
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("replica did not catch up with %s", lsn)
		case <-tick.C:
		}
	}
}
