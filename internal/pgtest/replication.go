package pgtest

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ErrNotStandby is returned (wrapped) by the replication controls of a server that is not in
// recovery.
var ErrNotStandby = errors.New("pgtest: server is not a standby")

// CutReplication stops the standby s from receiving WAL, so that commits on its primary from
// now on never reach it: it sets primary_conninfo to the empty string (ALTER SYSTEM, so it
// survives a restart) and reloads the configuration, which makes the startup process stop the
// WAL receiver and not start another. It blocks until no WAL receiver runs (at most a minute
// or until ctx ends). If no WAL receiver was running when it was called (its primary down, say),
// it restarts s instead (ending its sessions), since then nothing shows when the startup process
// has read the new setting.
//
// WAL the standby received before the cut is kept and is replayed, also by a later Promote;
// commits its primary acknowledges after CutReplication returned are lost by a failover to s.
// ResumeReplication, ReplicateThrough and DemoteToStandby undo it. It fails with ErrNotStandby
// on a primary.
func (s *Server) CutReplication(ctx context.Context) error {
	if err := s.cutReplication(ctx); err != nil {
		return fmt.Errorf("pgtest: cut replication of %s: %w", s.Name(), err)
	}
	return nil
}

func (s *Server) cutReplication(ctx context.Context) error {
	receiving, err := s.setPrimaryConninfo(ctx, "")
	if err != nil {
		return err
	}
	if !receiving {
		return s.Restart(ctx)
	}
	return waitFor(ctx, "the WAL receiver to stop", func(ctx context.Context) (bool, error) {
		n, err := s.walReceivers(ctx)
		return n == 0, err
	})
}

// walReceivers returns how many WAL receivers run on the server: 1 or 0.
func (s *Server) walReceivers(ctx context.Context) (int64, error) {
	var n int64
	err := s.withConn(ctx, nil, func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, sqlWALReceivers).Scan(&n)
	})
	return n, err
}

// ResumeReplication makes the standby s stream from primary again (after CutReplication, or to
// follow another server of the same history): it sets primary_conninfo to primary (ALTER
// SYSTEM), reloads the configuration, and blocks until s streams from primary and has replayed
// what primary had written when it was called (at most a minute for each step, less if ctx ends
// sooner). It fails with ErrNotStandby if s is not in recovery; a server whose history
// diverged from primary's (a killed or promoted old primary) needs DemoteToStandby instead.
func (s *Server) ResumeReplication(ctx context.Context, primary *Server) error {
	if err := s.resumeReplication(ctx, primary, primary.port); err != nil {
		return fmt.Errorf("pgtest: resume replication of %s from %s: %w", s.Name(), primary.Name(), err)
	}
	return nil
}

// ReplicateThrough is ResumeReplication with the WAL stream going through the proxy p, whose
// target must be primary: the standby s connects to p, so a test can delay (Proxy.SetLatency),
// hold (Proxy.Blackhole) or cut (Proxy.ResetAll) the replication stream while clients use
// primary directly. It blocks until s streams through p and has caught up with primary.
// CutReplication, ResumeReplication and DemoteToStandby make s stream directly again or not at
// all.
func (s *Server) ReplicateThrough(ctx context.Context, primary *Server, p *Proxy) error {
	if err := s.resumeReplication(ctx, primary, p.Port()); err != nil {
		return fmt.Errorf("pgtest: replicate %s from %s through proxy %s: %w", s.Name(), primary.Name(), p.Addr(), err)
	}
	return nil
}

// resumeReplication points the standby s at the server on port (primary itself or a proxy to
// it) and waits until s has caught up with primary through that port.
func (s *Server) resumeReplication(ctx context.Context, primary *Server, port int) error {
	if primary == s {
		return errors.New("a server cannot be its own standby")
	}
	if _, err := s.setPrimaryConninfo(ctx, standbyConninfo(port)); err != nil {
		return err
	}
	return s.waitStreamingVia(ctx, primary, port)
}

// setPrimaryConninfo sets primary_conninfo on the standby s and reloads its configuration, and
// reports whether a WAL receiver ran before. It fails with ErrNotStandby if s is not in recovery.
func (s *Server) setPrimaryConninfo(ctx context.Context, conninfo string) (receiving bool, err error) {
	err = s.withConn(ctx, nil, func(ctx context.Context, conn *pgx.Conn) error {
		var in bool
		if err := conn.QueryRow(ctx, sqlInRecovery).Scan(&in); err != nil {
			return err
		}
		if !in {
			return ErrNotStandby
		}
		var n int64
		if err := conn.QueryRow(ctx, sqlWALReceivers).Scan(&n); err != nil {
			return err
		}
		receiving = n > 0
		// ALTER SYSTEM takes no parameters: the server quotes the value.
		var stmt string
		if err := conn.QueryRow(ctx, sqlSetConninfoStmt, conninfo).Scan(&stmt); err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return err
		}
		_, err := conn.Exec(ctx, sqlReloadConf)
		return err
	})
	return receiving, err
}

// WALPosition returns the server's WAL position as a pg_lsn text ("0/3000148"): the flush
// position on a primary (pg_current_wal_flush_lsn), the replay position on a standby
// (pg_last_wal_replay_lsn). It blocks for at most one connection and query.
func (s *Server) WALPosition(ctx context.Context) (string, error) {
	lsn, err := s.walPosition(ctx)
	if err != nil {
		return "", fmt.Errorf("pgtest: WAL position of %s: %w", s.Name(), err)
	}
	return lsn, nil
}

func (s *Server) walPosition(ctx context.Context) (string, error) {
	var lsn string
	err := s.withConn(ctx, nil, func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, sqlWALPosition).Scan(&lsn)
	})
	return lsn, err
}
