package failover

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/puddle/v2"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/internal/pgtest"
)

func TestRaced(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errRetired, true},
		{fmt.Errorf("acquire: %w", errRetired), true},
		{puddle.ErrClosedPool, true},
		{fmt.Errorf("acquire: %w", puddle.ErrClosedPool), true},
		// Only the sentinel says nothing was sent; text alone does not.
		{errors.New("closed pool"), false},
		{errors.New(`ERROR: relation "closed pool" does not exist`), false},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, raced(tt.err), "%v", tt.err)
	}
}

// TestOpsRetryRacedCheckout: an operation whose generation is retired
// between picking it and checking a connection out moves to the next
// generation instead of failing — SendBatch included.
func TestOpsRetryRacedCheckout(t *testing.T) {
	srv := pgtest.NewPrimary(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, err := pgxpool.ParseConfig(srv.ConnString("postgres"))
	require.NoError(t, err)
	p, err := New(ctx, &Config{PoolConfig: cfg})
	require.NoError(t, err)
	defer p.Close()
	retireOnce := func() {
		done := false
		p.afterServing = func(g *generation) {
			if !done {
				done = true
				p.retire(g, &StaleWriterError{Reason: "test: retired during checkout"})
			}
		}
	}

	retireOnce()
	b := &pgx.Batch{}
	b.Queue("SELECT 41 + 1")
	br := p.SendBatch(ctx, b)
	var v int
	require.NoError(t, br.QueryRow().Scan(&v))
	require.NoError(t, br.Close())
	require.Equal(t, 42, v)
	require.Equal(t, int64(2), p.Generation())

	retireOnce()
	_, err = p.Exec(ctx, "SELECT 1")
	require.NoError(t, err)
	require.Equal(t, int64(3), p.Generation())

	retireOnce()
	require.NoError(t, p.Ping(ctx))
	require.Equal(t, int64(4), p.Generation())
	p.afterServing = nil
}
