package failover_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/faultlab"
	"github.com/skiplock/skiplock/internal/pgtest"
)

// cluster is a faultlab cluster (a primary and a streaming replica behind a
// proxy that stands in for the cluster endpoint) with test-failing helpers.
type cluster struct {
	*faultlab.Cluster
	t      testing.TB
	nodes  [2]*pgtest.Server
	proxy  *pgtest.Proxy
	schema string
}

const testSchema = faultlab.SchemaDefault

func newCluster(t testing.TB) *cluster { return newClusterWith(t, nil) }

func newClusterWith(t testing.TB, opts *pgtest.Options) *cluster {
	t.Helper()
	lab, err := faultlab.StartCluster(ctxFor(t, 3*time.Minute), &faultlab.ClusterConfig{Schema: testSchema, Options: opts, Logf: t.Logf})
	require.NoError(t, err)
	t.Cleanup(lab.Close)
	return &cluster{Cluster: lab, t: t, nodes: lab.Nodes, proxy: lab.Proxy, schema: testSchema}
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func (c *cluster) addr(i int) string { return c.Addr(i) }

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
	cfg, err := c.PoolConfig()
	require.NoError(c.t, err)
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
	p, err := c.NewPool(ctxFor(c.t, 30*time.Second), func(cfg *failover.Config) {
		cfg.Logger = testLogger(c.t)
		if edit != nil {
			edit(cfg)
		}
	})
	require.NoError(c.t, err)
	c.t.Cleanup(p.Close)
	return p
}

func (c *cluster) eventsOf(kind failover.EventKind) []failover.Event { return c.Events(kind) }

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
	require.NoError(c.t, c.WaitCaughtUp(ctxFor(c.t, time.Minute), p, r))
}
