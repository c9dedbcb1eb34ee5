package faultlab

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/internal/pgtest"
)

// TestRotatingCredentials: the endpoint's configuration logs in with the
// current password; after a rotation the old one is refused (28P01).
func TestRotatingCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL servers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := StartCluster(ctx, &ClusterConfig{Options: &pgtest.Options{PasswordRoles: []string{RoleDefault}}})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.EnableCredentials(ctx, RoleDefault))
	cfg, err := c.PoolConfig()
	require.NoError(t, err)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer pool.Close()
	var user string
	require.NoError(t, pool.QueryRow(ctx, `SELECT current_user`).Scan(&user))
	require.Equal(t, RoleDefault, user)

	old := c.Password()
	require.NoError(t, c.RotatePassword(ctx))
	require.NotEqual(t, old, c.Password())
	cc, err := pgx.ParseConfig(c.Proxy.ConnString("postgres"))
	require.NoError(t, err)
	cc.User, cc.Password = RoleDefault, old
	_, err = pgx.ConnectConfig(ctx, cc)
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "%v", err)
	require.Equal(t, "28P01", pgErr.Code)
	cc.Password = c.Password()
	conn, err := pgx.ConnectConfig(ctx, cc)
	require.NoError(t, err)
	require.NoError(t, conn.Close(ctx))
}
