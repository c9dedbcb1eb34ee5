package pgtest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
)

// Timeouts of role changes; a caller's context can only shorten them.
const (
	roleTimeout    = 60 * time.Second // for a role change to become visible
	connectTimeout = 5 * time.Second  // for one administrative connection attempt
	queryTimeout   = 30 * time.Second // for one administrative statement (CHECKPOINT included)
)

// SQL run by pgtest on its servers.
const (
	sqlInRecovery      = `SELECT pg_is_in_recovery()`
	sqlReadOnly        = `SHOW transaction_read_only`
	sqlSetReadOnly     = `ALTER SYSTEM SET default_transaction_read_only = on`
	sqlResetReadOnly   = `ALTER SYSTEM RESET default_transaction_read_only`
	sqlReloadConf      = `SELECT pg_reload_conf()`
	sqlClientBackends  = `SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name <> 'pgtest'`
	sqlTerminate       = `SELECT count(*) FROM unnest($1::int[]) AS t(pid) WHERE pg_terminate_backend(pid)`
	sqlBackendsAlive   = `SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])`
	sqlStandbyStatus   = `SELECT pg_is_in_recovery(), coalesce(w.status, ''), coalesce(w.sender_port, 0), coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false) FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS w ON true`
	sqlWALPosition     = `SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END)::text`
	sqlCheckpoint      = `CHECKPOINT`
	sqlWALReceivers    = `SELECT count(*) FROM pg_stat_wal_receiver`
	sqlSetConninfoStmt = `SELECT format('ALTER SYSTEM SET primary_conninfo = %L', $1::text)`
	sqlRoleExists      = `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`
	sqlCreateRoleStmt  = `SELECT format('CREATE ROLE %I WITH LOGIN SUPERUSER PASSWORD %L', $1::text, $2::text)`
	sqlAlterRoleStmt   = `SELECT format('ALTER ROLE %I WITH LOGIN SUPERUSER PASSWORD %L', $1::text, $2::text)`
	appNameAdmin       = "pgtest"
	readOnlyParamName  = "default_transaction_read_only"
	standbyStreamState = "streaming"
)

// connect opens an administrative connection to the server, with params as extra run-time
// parameters.
func (s *Server) connect(ctx context.Context, params map[string]string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(s.ConnString("postgres"))
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = connectTimeout
	cfg.RuntimeParams["application_name"] = appNameAdmin
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// withConn runs f on a new administrative connection, within queryTimeout.
func (s *Server) withConn(ctx context.Context, params map[string]string, f func(ctx context.Context, conn *pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	conn, err := s.connect(ctx, params)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return f(ctx, conn)
}

// waitFor polls check, each time with a fresh connection through check itself, until it
// reports true, at most roleTimeout or until ctx ends. Errors of check are retried (the server
// may be restarting); the last one is reported on timeout.
func waitFor(ctx context.Context, what string, check func(ctx context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, roleTimeout)
	defer cancel()
	var lastErr error
	for {
		ok, err := check(ctx)
		if ok && err == nil {
			return nil
		}
		lastErr = err
		timer := time.NewTimer(pollInterval)
		select {
		case <-ctx.Done():
			timer.Stop()
			if lastErr != nil {
				return fmt.Errorf("waiting for %s: %w (last error: %v)", what, ctx.Err(), lastErr)
			}
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-timer.C:
		}
	}
}

// InRecovery reports whether the server is in recovery (a standby), with pg_is_in_recovery()
// on a new connection. It blocks for at most one connection and query.
func (s *Server) InRecovery(ctx context.Context) (bool, error) {
	var in bool
	err := s.withConn(ctx, nil, func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, sqlInRecovery).Scan(&in)
	})
	if err != nil {
		return false, fmt.Errorf("pgtest: %s in recovery: %w", s.Name(), err)
	}
	return in, nil
}

// Promote promotes a standby to primary (pg_ctl promote) and blocks until pg_is_in_recovery()
// is false, at most a minute or until ctx ends. It fails if the server is not a standby.
func (s *Server) Promote(ctx context.Context) error {
	if err := s.promote(ctx); err != nil {
		return fmt.Errorf("pgtest: promote %s: %w", s.Name(), err)
	}
	return nil
}

func (s *Server) promote(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, roleTimeout)
	defer cancel()
	// -W: pgtest waits itself, with a real query.
	if _, err := s.user.run(pctx, s.dir, filepath.Join(s.bin, "pg_ctl"), "promote", "-W", "-D", s.dataDir); err != nil {
		return err
	}
	return waitFor(ctx, "end of recovery", func(ctx context.Context) (bool, error) {
		in, err := s.InRecovery(ctx)
		return !in, err
	})
}

// DemoteReadOnly makes the server read-only the quick way: ALTER SYSTEM SET
// default_transaction_read_only = on and a configuration reload. It blocks until a new session
// reports transaction_read_only = on (at most a minute or until ctx ends). Sessions that were
// already open then fail writes with SQLSTATE 25006 (read_only_sql_transaction) from their next
// transaction on. The setting survives restarts; UndoReadOnly and DemoteToStandby clear it.
func (s *Server) DemoteReadOnly(ctx context.Context) error {
	if err := s.setReadOnly(ctx, true); err != nil {
		return fmt.Errorf("pgtest: demote %s to read-only: %w", s.Name(), err)
	}
	return nil
}

// UndoReadOnly reverts DemoteReadOnly (ALTER SYSTEM RESET default_transaction_read_only and a
// reload) and blocks until a new session reports transaction_read_only = off (at most a minute
// or until ctx ends). Already-open sessions take writes again from their next transaction on.
func (s *Server) UndoReadOnly(ctx context.Context) error {
	if err := s.setReadOnly(ctx, false); err != nil {
		return fmt.Errorf("pgtest: undo read-only on %s: %w", s.Name(), err)
	}
	return nil
}

func (s *Server) setReadOnly(ctx context.Context, on bool) error {
	stmt, want := sqlResetReadOnly, "off"
	if on {
		stmt, want = sqlSetReadOnly, "on"
	}
	// The session itself must not be read-only; ALTER SYSTEM would be allowed anyway, but this
	// does not depend on that.
	params := map[string]string{readOnlyParamName: "off"}
	err := s.withConn(ctx, params, func(ctx context.Context, conn *pgx.Conn) error {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return err
		}
		_, err := conn.Exec(ctx, sqlReloadConf)
		return err
	})
	if err != nil {
		return err
	}
	return waitFor(ctx, "transaction_read_only = "+want+" in a new session", func(ctx context.Context) (bool, error) {
		var got string
		err := s.withConn(ctx, nil, func(ctx context.Context, conn *pgx.Conn) error {
			return conn.QueryRow(ctx, sqlReadOnly).Scan(&got)
		})
		return got == want, err
	})
}

// DemoteToStandby turns the server into a streaming standby of primary, as after a failover
// that promoted primary: it shuts the server down (fast), runs pg_rewind against primary (which
// rewinds the server if its timeline diverged, and otherwise does nothing), writes standby.signal
// and a primary_conninfo pointing at primary (which also undoes CutReplication and
// ReplicateThrough), restores its own settings and pg_hba.conf (pg_rewind copies primary's),
// clears a DemoteReadOnly, and starts it on the same port. It blocks until the server is in
// recovery and streaming from primary (each step at most a minute, less if ctx ends sooner). A
// server that was killed is crash-recovered by pg_rewind first (tested after Kill with commits
// primary never had: they are discarded). On error the server may be left stopped.
func (s *Server) DemoteToStandby(ctx context.Context, primary *Server) error {
	if err := s.demoteToStandby(ctx, primary); err != nil {
		return fmt.Errorf("pgtest: demote %s to standby of %s: %w", s.Name(), primary.Name(), err)
	}
	return nil
}

func (s *Server) demoteToStandby(ctx context.Context, primary *Server) error {
	if primary == s {
		return errors.New("a server cannot be its own standby")
	}
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closed {
		return errors.New("server is closed")
	}
	// pg_rewind reads the source's timeline from its control file, which a recently promoted
	// server updates only at its next checkpoint: without one, pg_rewind finds "the same
	// timeline" and skips a rewind that is needed.
	err := primary.withConn(ctx, nil, func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sqlCheckpoint)
		return err
	})
	if err != nil {
		return fmt.Errorf("checkpoint on %s: %w", primary.Name(), err)
	}
	if err := s.stop(ctx); err != nil {
		return err
	}
	args := []string{"--target-pgdata=" + s.dataDir,
		"--source-server=" + standbyConninfo(primary.port) + " dbname=postgres application_name=" + appNameAdmin}
	if !s.opts.Fsync {
		args = append(args, "--no-sync")
	}
	rctx, cancel := context.WithTimeout(ctx, roleTimeout)
	defer cancel()
	if _, err := s.user.run(rctx, s.dir, filepath.Join(s.bin, "pg_rewind"), args...); err != nil {
		return err
	}
	// pg_rewind copies the source's configuration files; restore this server's own.
	if err := writeConf(s.dataDir, &s.opts, s.user); err != nil {
		return err
	}
	if err := writeStandbyConf(s.dataDir, primary.port, s.user); err != nil {
		return err
	}
	if err := s.start(ctx, s.port); err != nil {
		return err
	}
	return s.waitStreaming(ctx, primary)
}

// waitStreaming blocks until the server is in recovery, its WAL receiver streams from primary,
// and it has replayed what primary had written when waitStreaming was called; at most a minute
// or until ctx ends.
func (s *Server) waitStreaming(ctx context.Context, primary *Server) error {
	return s.waitStreamingVia(ctx, primary, primary.port)
}

// waitStreamingVia is waitStreaming for a standby whose WAL receiver connects to port: primary's
// own, or a proxy's that forwards to primary.
func (s *Server) waitStreamingVia(ctx context.Context, primary *Server, port int) error {
	var target string
	err := primary.withConn(ctx, nil, func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, sqlWALPosition).Scan(&target)
	})
	if err != nil {
		return fmt.Errorf("WAL position of %s: %w", primary.Name(), err)
	}
	return waitFor(ctx, "streaming from "+primary.Name()+" up to "+target, func(ctx context.Context) (bool, error) {
		var (
			in, caughtUp bool
			status       string
			senderPort   int32
		)
		err := s.withConn(ctx, nil, func(ctx context.Context, conn *pgx.Conn) error {
			return conn.QueryRow(ctx, sqlStandbyStatus, target).Scan(&in, &status, &senderPort, &caughtUp)
		})
		switch {
		case err != nil:
			return false, err
		case !in:
			return false, errors.New("not in recovery")
		case status != standbyStreamState || int(senderPort) != port:
			return false, fmt.Errorf("WAL receiver status %q from port %d", status, senderPort)
		case !caughtUp:
			return false, errors.New("not caught up yet")
		}
		return true, nil
	})
}

// TerminateBackends terminates every client backend of the server except pgtest's own
// administrative ones (application_name pgtest, such as a pg_rewind of another server reading
// from this one) (pg_terminate_backend; replication connections are left alone) and returns how many it
// terminated. It blocks until they have exited (at most a minute or until ctx ends), so their
// clients' next round trip fails.
func (s *Server) TerminateBackends(ctx context.Context) (int, error) {
	n, err := s.terminateBackends(ctx)
	if err != nil {
		return n, fmt.Errorf("pgtest: terminate backends of %s: %w", s.Name(), err)
	}
	return n, nil
}

func (s *Server) terminateBackends(ctx context.Context) (int, error) {
	var (
		pids []int32
		n    int64
	)
	err := s.withConn(ctx, nil, func(ctx context.Context, conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, sqlClientBackends)
		if err != nil {
			return err
		}
		if pids, err = pgx.CollectRows(rows, pgx.RowTo[int32]); err != nil {
			return err
		}
		return conn.QueryRow(ctx, sqlTerminate, pids).Scan(&n)
	})
	if err != nil {
		return 0, err
	}
	err = waitFor(ctx, "terminated backends to exit", func(ctx context.Context) (bool, error) {
		var alive int64
		err := s.withConn(ctx, nil, func(ctx context.Context, conn *pgx.Conn) error {
			return conn.QueryRow(ctx, sqlBackendsAlive, pids).Scan(&alive)
		})
		return alive == 0, err
	})
	return int(n), err
}
