package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// sharedAddr returns the host:port of the shared server.
func sharedAddr(t *testing.T) string {
	t.Helper()
	cfg, err := pgconn.ParseConfig(SharedURL(t))
	require.NoError(t, err)
	return net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
}

func serverPort(t *testing.T, conn *pgx.Conn) int {
	t.Helper()
	var port int
	require.NoError(t, conn.QueryRow(testCtx(t), "SELECT inet_server_port()").Scan(&port))
	return port
}

func TestProxySetTargetMovesOnlyNewConnections(t *testing.T) {
	t.Parallel()
	a, b := NewPrimary(t, nil), NewPrimary(t, nil)
	addr := func(s *Server) string { return net.JoinHostPort(s.Host(), strconv.Itoa(s.Port())) }
	p := NewTestProxy(t, addr(a))
	require.Equal(t, addr(a), p.Target())
	require.Equal(t, "127.0.0.1:"+strconv.Itoa(p.Port()), p.Addr())
	require.Equal(t, connString("127.0.0.1", p.Port(), "x"), p.ConnString("x"))

	old := connect(t, p.ConnString(""))
	require.Equal(t, a.Port(), serverPort(t, old))
	require.Equal(t, 1, p.Conns())

	p.SetTarget(addr(b))
	require.Equal(t, addr(b), p.Target())
	require.Equal(t, b.Port(), serverPort(t, connect(t, p.ConnString(""))))
	require.Equal(t, a.Port(), serverPort(t, old), "an open connection stays with the old target")
	require.Equal(t, 2, p.Conns())
}

func TestProxyBlackholeHoldsBytes(t *testing.T) {
	t.Parallel()
	p := NewTestProxy(t, sharedAddr(t))
	timedOut := connect(t, p.ConnString(""))
	held := connect(t, p.ConnString(""))
	_, err := timedOut.Exec(testCtx(t), "SELECT 1")
	require.NoError(t, err)

	p.Blackhole(true)
	heldDone := make(chan error, 1)
	var heldResult int
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		heldDone <- held.QueryRow(ctx, "SELECT 42").Scan(&heldResult)
	}()

	// A query with a deadline fails at the deadline, not later: the connection is not closed.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, err = timedOut.Exec(ctx, "SELECT 1")
	elapsed := time.Since(start)
	require.Error(t, err)
	require.GreaterOrEqual(t, elapsed, 900*time.Millisecond)
	require.Less(t, elapsed, 2*time.Second)

	// New connections are accepted, but the handshake is held too.
	nctx, ncancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer ncancel()
	_, err = pgx.Connect(nctx, p.ConnString(""))
	require.Error(t, err)

	// The query sent a second ago is held, not lost, and completes once the blackhole ends.
	select {
	case err := <-heldDone:
		t.Fatalf("query completed during the blackhole: %v", err)
	default:
	}
	p.Blackhole(false)
	select {
	case err := <-heldDone:
		require.NoError(t, err)
		require.Equal(t, 42, heldResult)
	case <-time.After(10 * time.Second):
		t.Fatal("held query did not complete after the blackhole ended")
	}
	execSQL(t, p.ConnString(""), "SELECT 1")
	// The timed-out connection was closed by pgx; wait for its cleanup (a cancel request through
	// the proxy) so nothing outlives the test.
	requireClosed(t, timedOut.PgConn().CleanupDone(), "cleanup of the timed-out connection")
}

func TestProxyResetAll(t *testing.T) {
	t.Parallel()
	p := NewTestProxy(t, sharedAddr(t))
	conns := []*pgx.Conn{connect(t, p.ConnString("")), connect(t, p.ConnString(""))}
	require.Equal(t, 2, p.Conns())

	require.Equal(t, 2, p.ResetAll())
	require.Equal(t, 0, p.Conns())
	for _, c := range conns {
		_, err := c.Exec(testCtx(t), "SELECT 1")
		require.Error(t, err)
	}
	// pgx cleans a broken connection up with a cancel request on a new connection through the
	// proxy; let those finish.
	for _, c := range conns {
		requireClosed(t, c.PgConn().CleanupDone(), "cleanup of a reset connection")
	}
	waitUntil(t, 10*time.Second, "cancel requests to end", func() error {
		if n := p.Conns(); n != 0 {
			return fmt.Errorf("%d connections", n)
		}
		return nil
	})

	conn := connect(t, p.ConnString(""))
	_, err := conn.Exec(testCtx(t), "SELECT 1")
	require.NoError(t, err)
	require.Equal(t, 1, p.Conns())
}

func TestProxyLatency(t *testing.T) {
	t.Parallel()
	const d = 150 * time.Millisecond
	p := NewTestProxy(t, sharedAddr(t))
	conn := connect(t, p.ConnString(""))
	ctx := testCtx(t)
	roundTrip := func() time.Duration {
		start := time.Now()
		_, err := conn.Exec(ctx, "SELECT 1")
		require.NoError(t, err)
		return time.Since(start)
	}

	p.SetLatency(d)
	// One chunk each way, each delayed by d.
	require.GreaterOrEqual(t, roundTrip(), 2*d)
	p.SetLatency(0)
	require.Less(t, roundTrip(), 2*d)
}

// TestProxyLatencyKeepsThroughput sends many chunks in a row through a delayed proxy to an echo
// server: they arrive in order, about 2d after they were sent, not one per d.
func TestProxyLatencyKeepsThroughput(t *testing.T) {
	t.Parallel()
	const (
		d        = 200 * time.Millisecond
		messages = 10
		gap      = 10 * time.Millisecond
	)
	echo := startEcho(t)
	p := NewTestProxy(t, echo)
	p.SetLatency(d)
	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c.Close()

	start := time.Now()
	var want bytes.Buffer
	writeErr := make(chan error, 1)
	go func() {
		for i := range messages {
			msg := fmt.Sprintf("message %02d;", i)
			if _, err := c.Write([]byte(msg)); err != nil {
				writeErr <- err
				return
			}
			time.Sleep(gap) // separate chunks, not readiness
		}
		writeErr <- nil
	}()
	for i := range messages {
		want.WriteString(fmt.Sprintf("message %02d;", i))
	}
	got := make([]byte, want.Len())
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = io.ReadFull(c, got[:1])
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), 2*d, "first byte after a round trip")
	_, err = io.ReadFull(c, got[1:])
	require.NoError(t, err)
	elapsed := time.Since(start)
	require.NoError(t, <-writeErr)
	require.Equal(t, want.String(), string(got), "order is kept")
	// Serialised delivery would take messages*d per direction.
	require.Less(t, elapsed, messages*d, "chunks are delayed in parallel")
}

// startEcho starts a TCP echo server for the test and returns its address.
func startEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

func TestProxyHalfCloseAndClose(t *testing.T) {
	t.Parallel()
	p := NewTestProxy(t, startEcho(t))
	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte("bye"))
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	got, err := io.ReadAll(c)
	require.NoError(t, err, "the echo server's close reaches the client")
	require.Equal(t, "bye", string(got))
	waitUntil(t, 10*time.Second, "connection to be forgotten", func() error {
		if p.Conns() != 0 {
			return errNotYet
		}
		return nil
	})

	// Close ends open connections and is idempotent.
	c2, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c2.Close()
	waitUntil(t, 10*time.Second, "connection to be accepted", func() error {
		if p.Conns() != 1 {
			return errNotYet
		}
		return nil
	})
	require.NoError(t, p.Close())
	require.NoError(t, p.Close())
	require.Equal(t, 0, p.Conns())
	require.NoError(t, c2.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = c2.Read(make([]byte, 1))
	require.Error(t, err)
	_, err = net.Dial("tcp", p.Addr())
	require.Error(t, err, "a closed proxy does not listen")
}

func TestProxyUnreachableTarget(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := ln.Addr().String()
	require.NoError(t, ln.Close())

	p := NewTestProxy(t, dead)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pgx.Connect(ctx, p.ConnString(""))
	require.Error(t, err)
	require.False(t, errors.Is(err, context.DeadlineExceeded), "the client sees the refused dial at once: %v", err)

	_, err = NewProxy("no-port")
	require.Error(t, err)
}
