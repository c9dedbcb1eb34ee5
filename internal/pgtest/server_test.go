package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

func TestReplicaReceivesRows(t *testing.T) {
	t.Parallel()
	start := time.Now()
	primary, replica := NewPair(t, nil)
	t.Logf("primary+replica pair started in %v", time.Since(start))
	require.NotEqual(t, primary.Port(), replica.Port())
	require.Equal(t, "pg-"+strconv.Itoa(replica.Port()), replica.Name())

	ctx := testCtx(t)
	in, err := replica.InRecovery(ctx)
	require.NoError(t, err)
	require.True(t, in)
	in, err = primary.InRecovery(ctx)
	require.NoError(t, err)
	require.False(t, in)

	execSQL(t, primary.ConnString(""), "CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
	waitUntil(t, 10*time.Second, "row on replica", func() error {
		n, err := queryInt(ctx, replica.ConnString(""), "SELECT v FROM t")
		if err == nil && n != 42 {
			return errors.New("wrong value")
		}
		return err
	})
}

func TestPromoteTakesWrites(t *testing.T) {
	t.Parallel()
	primary, replica := NewPair(t, nil)
	ctx := testCtx(t)
	execSQL(t, primary.ConnString(""), "CREATE TABLE t (v int)")
	waitUntil(t, 10*time.Second, "table on replica", func() error {
		_, err := queryInt(ctx, replica.ConnString(""), "SELECT count(*) FROM t")
		return err
	})

	// A standby refuses writes until it is promoted.
	_, err := connect(t, replica.ConnString("")).Exec(ctx, "INSERT INTO t VALUES (1)")
	requireSQLState(t, err, "25006")

	require.NoError(t, replica.Promote(ctx))
	in, err := replica.InRecovery(ctx)
	require.NoError(t, err)
	require.False(t, in)
	execSQL(t, replica.ConnString(""), "INSERT INTO t VALUES (1)")
	n, err := queryInt(ctx, replica.ConnString(""), "SELECT count(*) FROM t")
	require.NoError(t, err)
	require.EqualValues(t, 1, n)

	// Promoting a primary is an error.
	require.Error(t, primary.Promote(ctx))
}

func TestDemoteReadOnlyFailsOpenSessions(t *testing.T) {
	t.Parallel()
	s := NewPrimary(t, nil)
	ctx := testCtx(t)
	old := connect(t, s.ConnString(""))
	_, err := old.Exec(ctx, "CREATE TABLE t (v int)")
	require.NoError(t, err)

	require.NoError(t, s.DemoteReadOnly(ctx))
	_, err = old.Exec(ctx, "INSERT INTO t VALUES (1)")
	requireSQLState(t, err, "25006")
	_, err = connect(t, s.ConnString("")).Exec(ctx, "INSERT INTO t VALUES (1)")
	requireSQLState(t, err, "25006")
	// Not a standby: only read-only.
	in, err := s.InRecovery(ctx)
	require.NoError(t, err)
	require.False(t, in)

	require.NoError(t, s.UndoReadOnly(ctx))
	_, err = old.Exec(ctx, "INSERT INTO t VALUES (1)")
	require.NoError(t, err)
	execSQL(t, s.ConnString(""), "INSERT INTO t VALUES (2)")
}

func requireSQLState(t *testing.T, err error, code string) {
	t.Helper()
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, code, pgErr.Code, "error: %v", err)
}

func TestDemoteToStandbyAfterFailover(t *testing.T) {
	t.Parallel()
	oldPrimary, newPrimary := NewPair(t, nil)
	logOnFailure(t, oldPrimary, newPrimary)
	ctx := testCtx(t)
	execSQL(t, oldPrimary.ConnString(""), "CREATE TABLE t (v text); INSERT INTO t VALUES ('before')")
	waitUntil(t, 10*time.Second, "row on replica", func() error {
		n, err := queryInt(ctx, newPrimary.ConnString(""), "SELECT count(*) FROM t")
		if err == nil && n != 1 {
			return errNotYet
		}
		return err
	})

	require.NoError(t, newPrimary.Promote(ctx))
	// Split brain: the old primary takes a write the new one never sees, so the timelines
	// diverge and only pg_rewind makes the old primary a standby again.
	execSQL(t, oldPrimary.ConnString(""), "INSERT INTO t VALUES ('lost')")
	execSQL(t, newPrimary.ConnString(""), "INSERT INTO t VALUES ('after')")

	require.NoError(t, oldPrimary.DemoteToStandby(ctx, newPrimary))
	in, err := oldPrimary.InRecovery(ctx)
	require.NoError(t, err)
	require.True(t, in)

	execSQL(t, newPrimary.ConnString(""), "INSERT INTO t VALUES ('streamed')")
	waitUntil(t, 10*time.Second, "row from new primary on old primary", func() error {
		n, err := queryInt(ctx, oldPrimary.ConnString(""), "SELECT count(*) FROM t WHERE v = 'streamed'")
		if err == nil && n != 1 {
			return errNotYet
		}
		return err
	})
	n, err := queryInt(ctx, oldPrimary.ConnString(""), "SELECT count(*) FROM t WHERE v = 'lost'")
	require.NoError(t, err)
	require.Zero(t, n, "the diverged write must be rewound")
	n, err = queryInt(ctx, oldPrimary.ConnString(""), "SELECT count(*) FROM t")
	require.NoError(t, err)
	require.EqualValues(t, 3, n) // before, after, streamed
}

func TestTerminateBackends(t *testing.T) {
	t.Parallel()
	s := NewPrimary(t, nil)
	ctx := testCtx(t)
	conn := connect(t, s.ConnString(""))
	_, err := conn.Exec(ctx, "SELECT 1")
	require.NoError(t, err)

	n, err := s.TerminateBackends(ctx)
	require.NoError(t, err)
	require.GreaterOrEqual(t, n, 1)
	_, err = conn.Exec(ctx, "SELECT 1")
	require.Error(t, err)
	// New connections work.
	execSQL(t, s.ConnString(""), "SELECT 1")
}

func TestRestartAndKillKeepData(t *testing.T) {
	t.Parallel()
	s := NewPrimary(t, nil)
	ctx := testCtx(t)
	port := s.Port()
	execSQL(t, s.ConnString(""), "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
	conn := connect(t, s.ConnString(""))

	require.NoError(t, s.Restart(ctx))
	require.Equal(t, port, s.Port())
	_, err := conn.Exec(ctx, "SELECT 1")
	require.Error(t, err, "a restart ends open sessions")
	execSQL(t, s.ConnString(""), "INSERT INTO t VALUES (2)")

	// A crash loses no committed row (synchronous_commit stays on).
	require.NoError(t, s.Kill())
	require.NoError(t, s.Kill(), "Kill is idempotent")
	_, err = queryInt(ctx, s.ConnString(""), "SELECT 1")
	require.Error(t, err, "a killed server refuses connections")
	require.NoError(t, s.Restart(ctx))
	n, err := queryInt(ctx, s.ConnString(""), "SELECT count(*) FROM t")
	require.NoError(t, err)
	require.EqualValues(t, 2, n)

	require.NoError(t, s.Stop(ctx))
	require.NoError(t, s.Stop(ctx), "Stop is idempotent")
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close is idempotent")
	require.NoDirExists(t, s.dir)
	require.Error(t, s.Restart(ctx), "a closed server cannot restart")
}

func TestCloseRunningServerRemovesEverything(t *testing.T) {
	t.Parallel()
	s, err := StartPrimary(testCtx(t), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	pm := s.running()
	require.NotNil(t, pm)
	require.FileExists(t, filepath.Join(s.DataDir(), "PG_VERSION"))

	require.NoError(t, s.Close())
	requireClosed(t, pm.exited, "postmaster exit")
	require.NoDirExists(t, s.dir)
	require.NoError(t, s.Kill(), "Kill after Close does nothing")
}

func requireClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestSweepStopsStaleServers(t *testing.T) {
	t.Parallel()
	s := NewPrimary(t, nil)
	pm := s.running()
	require.NotNil(t, pm)
	root := filepath.Dir(s.dir)

	// A process that has exited: its pid names no process (pid reuse is caught by the start time).
	dead := deadPid(t)
	require.NoError(t, os.WriteFile(filepath.Join(s.dir, ownerFile), []byte(strconv.Itoa(dead)+"\n"), 0o644))
	// A live server of this process and a directory without owner file stay.
	live := NewPrimary(t, nil)

	sweep(root)
	requireClosed(t, pm.exited, "stale postmaster to exit")
	require.ErrorIs(t, syscall.Kill(pm.pid, 0), syscall.ESRCH)
	require.NoDirExists(t, s.dir)
	require.DirExists(t, live.dir)
	in, err := live.InRecovery(testCtx(t))
	require.NoError(t, err)
	require.False(t, in)
}

// deadPid returns the pid of a process that has exited and been reaped.
func deadPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	require.NoError(t, cmd.Run())
	pid := cmd.Process.Pid
	require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH)
	return pid
}

func TestSweepIgnoresForeignPids(t *testing.T) {
	// A postmaster.pid naming a process that is not a postgres of that directory is never signalled.
	dir := t.TempDir()
	data := filepath.Join(dir, dataDirName)
	require.NoError(t, os.Mkdir(data, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(data, "postmaster.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"+data+"\n"), 0o600))
	require.False(t, isPostmasterOf(os.Getpid(), data))
	require.NoError(t, stopStalePostmaster(data))
}

func TestStartFailureCarriesServerLog(t *testing.T) {
	t.Parallel()
	var logged []string
	opts := &Options{
		Settings: map[string]string{"shared_buffers": "not-a-size"},
		Logf:     func(format string, args ...any) { logged = append(logged, format) },
	}
	_, err := StartPrimary(testCtx(t), opts)
	require.Error(t, err)
	require.Contains(t, err.Error(), "shared_buffers", "the error carries the server log tail")
	require.Contains(t, err.Error(), "pgtest: start primary")
	require.NotEmpty(t, logged)

	_, err = StartPrimary(testCtx(t), &Options{Settings: map[string]string{"bad name": "1"}})
	require.ErrorContains(t, err, "invalid parameter name")
}

func TestConnString(t *testing.T) {
	s := &Server{port: 5433}
	require.Equal(t, "postgres://postgres@127.0.0.1:5433/postgres?sslmode=disable", s.ConnString(""))
	require.Equal(t, "postgres://postgres@127.0.0.1:5433/my%20db?sslmode=disable", s.ConnString("my db"))
	require.Equal(t, "127.0.0.1", s.Host())
	require.Equal(t, "pg-5433", s.Name())
}

func TestConfQuoting(t *testing.T) {
	o := &Options{Fsync: true, Settings: map[string]string{"application_name": `it's a \ test`, "work_mem": "8MB"}}
	conf := o.conf()
	require.Contains(t, conf, "fsync = 'on'\n")
	require.Contains(t, conf, `application_name = 'it''s a \\ test'`+"\n")
	// User settings come last, so they override pgtest's.
	require.Greater(t, strings.Index(conf, "work_mem"), strings.Index(conf, "max_connections"))
}

func TestWriteStandbyConf(t *testing.T) {
	dir := t.TempDir()
	u := &osUser{uid: os.Geteuid(), gid: os.Getegid()}
	auto := "# Do not edit this file manually!\nprimary_conninfo = 'host=x'\ndefault_transaction_read_only = 'on'\nwork_mem = '8MB'"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "postgresql.auto.conf"), []byte(auto), 0o600))
	require.NoError(t, writeStandbyConf(dir, 6000, u))
	b, err := os.ReadFile(filepath.Join(dir, "postgresql.auto.conf"))
	require.NoError(t, err)
	require.Equal(t, "# Do not edit this file manually!\nwork_mem = '8MB'\n"+
		"primary_conninfo = 'host=127.0.0.1 port=6000 user=postgres sslmode=disable'\n", string(b))
	require.FileExists(t, filepath.Join(dir, "standby.signal"))
}

func TestStopContextExpiry(t *testing.T) {
	// An expired context makes Stop return at once with an error wrapping the context's.
	t.Parallel()
	s := NewPrimary(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, s.Stop(ctx), context.Canceled)
	require.NoError(t, s.Stop(testCtx(t)))
}

// logOnFailure prints the servers' logs if the test fails.
func logOnFailure(t *testing.T, servers ...*Server) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, s := range servers {
			b, err := os.ReadFile(s.logPath)
			t.Logf("log of %s (%v):\n%s", s.Name(), err, b)
		}
	})
}

// requireRows waits until the server of connString has want rows in t.
func requireRows(t *testing.T, connString string, want int64) {
	t.Helper()
	waitUntil(t, 10*time.Second, "rows on "+connString, func() error {
		n, err := queryInt(testCtx(t), connString, "SELECT count(*) FROM t")
		if err == nil && n != want {
			return fmt.Errorf("%d rows, want %d", n, want)
		}
		return err
	})
}

// TestReversedFailoverAfterCrash: the primary crashes, the replica is promoted, the crashed
// primary comes back as a standby (pg_rewind crash-recovers it first), then the failover is
// reversed.
func TestReversedFailoverAfterCrash(t *testing.T) {
	t.Parallel()
	a, b := NewPair(t, nil)
	logOnFailure(t, a, b)
	ctx := testCtx(t)
	execSQL(t, a.ConnString(""), "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
	requireRows(t, b.ConnString(""), 1)

	require.NoError(t, a.Kill())
	require.NoError(t, b.Promote(ctx))
	execSQL(t, b.ConnString(""), "INSERT INTO t VALUES (2)")
	require.NoError(t, a.DemoteToStandby(ctx, b))
	requireRows(t, a.ConnString(""), 2)

	// Reverse: b is demoted the quick way first, as a failover would, then a takes over.
	require.NoError(t, b.DemoteReadOnly(ctx))
	require.NoError(t, a.Promote(ctx))
	execSQL(t, a.ConnString(""), "INSERT INTO t VALUES (3)")
	require.NoError(t, b.DemoteToStandby(ctx, a))
	requireRows(t, b.ConnString(""), 3)

	// A standby that is promoted takes writes, although it had been demoted to read-only.
	require.NoError(t, a.Stop(ctx))
	require.NoError(t, b.Promote(ctx))
	execSQL(t, b.ConnString(""), "INSERT INTO t VALUES (4)")
}

func TestOptionsApplyPerServer(t *testing.T) {
	t.Parallel()
	p := NewPrimary(t, &Options{Fsync: true, Settings: map[string]string{"work_mem": "7MB"}})
	r, err := p.StartReplica(testCtx(t), &Options{Settings: map[string]string{"work_mem": "5MB"}})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, r.Close()) })

	show := func(s *Server, name string) string {
		var v string
		require.NoError(t, connect(t, s.ConnString("")).QueryRow(testCtx(t), "SHOW "+name).Scan(&v))
		return v
	}
	require.Equal(t, "on", show(p, "fsync"))
	require.Equal(t, "7MB", show(p, "work_mem"))
	require.Equal(t, "off", show(r, "fsync"))
	require.Equal(t, "5MB", show(r, "work_mem"))
	require.Equal(t, "on", show(r, "wal_log_hints"))
	require.Equal(t, "200", show(r, "max_connections"))
}

func TestStartDetectsTakenPort(t *testing.T) {
	t.Parallel()
	s := NewPrimary(t, nil)
	other := NewPrimary(t, nil)
	ctx := testCtx(t)

	// The server at a port is recognised by its data directory.
	require.NoError(t, s.checkServes(ctx, s.Port()))
	require.ErrorContains(t, s.checkServes(ctx, other.Port()), "served by another server")

	// A port taken by something else is reported as such, so that another port is tried.
	require.NoError(t, s.Stop(ctx))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	err = s.start(ctx, ln.Addr().(*net.TCPAddr).Port)
	var inUse *portInUseError
	require.ErrorAs(t, err, &inUse)
	require.Nil(t, s.running())

	require.NoError(t, s.Restart(ctx))
	in, err := s.InRecovery(ctx)
	require.NoError(t, err)
	require.False(t, in)
}
