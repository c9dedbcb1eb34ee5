package pgtest

// NOTE(lab): minimal stand-ins, in the lab branch only, for CutReplication, ResumeReplication,
// SetRolePassword and Options.PasswordRoles, which pgtest's owner is adding with these names.
// Delete this file when theirs lands.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
)

// hbaPasswordMarker starts the pg_hba.conf lines of PasswordRoles.
const hbaPasswordMarker = "# pgtest: password roles\n"

var roleNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// writePasswordHBA puts scram-sha-256 lines for roles at the top of dataDir's pg_hba.conf
// (before the trust lines), replacing earlier ones.
func writePasswordHBA(dataDir string, roles []string, u *osUser) error {
	path := filepath.Join(dataDir, "pg_hba.conf")
	old, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	rest := string(old)
	if strings.HasPrefix(rest, hbaPasswordMarker) {
		_, rest, _ = strings.Cut(rest, "# pgtest: end of password roles\n")
	}
	if len(roles) == 0 {
		if rest == string(old) {
			return nil
		}
		return u.writeFile(path, []byte(rest), 0o600)
	}
	var b strings.Builder
	b.WriteString(hbaPasswordMarker)
	for _, r := range roles {
		if !roleNameRE.MatchString(r) {
			return fmt.Errorf("Options.PasswordRoles: invalid role name %q", r)
		}
		fmt.Fprintf(&b, "host all %s 127.0.0.1/32 scram-sha-256\n", r)
	}
	b.WriteString("# pgtest: end of password roles\n")
	b.WriteString(rest)
	return u.writeFile(path, []byte(b.String()), 0o600)
}

// SetRolePassword sets the password of role on the server (creating the login role if it does
// not exist); the old password stops working for new connections at once. On a primary the
// change replicates to its standbys. The password never appears in an error.
func (s *Server) SetRolePassword(ctx context.Context, role, password string) error {
	if !roleNameRE.MatchString(role) {
		return fmt.Errorf("pgtest: set role password on %s: invalid role name %q", s.Name(), role)
	}
	err := s.withConn(ctx, map[string]string{readOnlyParamName: "off"}, func(ctx context.Context, conn *pgx.Conn) error {
		ident := pgx.Identifier{role}.Sanitize()
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, role).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			if _, err := conn.Exec(ctx, "CREATE ROLE "+ident+" LOGIN"); err != nil {
				return err
			}
		}
		// The password is sent as a literal of a utility statement (no parameters there);
		// quoted by pgx, never logged.
		lit := "'" + strings.ReplaceAll(password, "'", "''") + "'"
		_, err := conn.Exec(ctx, "ALTER ROLE "+ident+" PASSWORD "+lit)
		return err
	})
	if err != nil {
		return fmt.Errorf("pgtest: set password of role %s on %s: %w", role, s.Name(), err)
	}
	return nil
}

// CutReplication stops the standby's WAL receiver (primary_conninfo emptied and the
// configuration reloaded), so the primary's later commits do not reach it. It blocks until
// pg_stat_wal_receiver shows no receiver (at most a minute or until ctx ends).
func (s *Server) CutReplication(ctx context.Context) error {
	if err := s.setPrimaryConninfo(ctx, ""); err != nil {
		return fmt.Errorf("pgtest: cut replication of %s: %w", s.Name(), err)
	}
	err := waitFor(ctx, "no WAL receiver", func(ctx context.Context) (bool, error) {
		var n int
		err := s.withConn(ctx, nil, func(ctx context.Context, conn *pgx.Conn) error {
			return conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_wal_receiver`).Scan(&n)
		})
		return n == 0, err
	})
	if err != nil {
		return fmt.Errorf("pgtest: cut replication of %s: %w", s.Name(), err)
	}
	return nil
}

// ResumeReplication points the standby at primary again and blocks until it streams from it
// and has caught up (at most a minute or until ctx ends).
func (s *Server) ResumeReplication(ctx context.Context, primary *Server) error {
	if err := s.setPrimaryConninfo(ctx, standbyConninfo(primary.port)); err != nil {
		return fmt.Errorf("pgtest: resume replication of %s: %w", s.Name(), err)
	}
	if err := s.waitStreaming(ctx, primary); err != nil {
		return fmt.Errorf("pgtest: resume replication of %s: %w", s.Name(), err)
	}
	return nil
}

func (s *Server) setPrimaryConninfo(ctx context.Context, conninfo string) error {
	return s.withConn(ctx, nil, func(ctx context.Context, conn *pgx.Conn) error {
		lit := "'" + strings.ReplaceAll(conninfo, "'", "''") + "'"
		if _, err := conn.Exec(ctx, "ALTER SYSTEM SET primary_conninfo = "+lit); err != nil {
			return err
		}
		_, err := conn.Exec(ctx, sqlReloadConf)
		return err
	})
}
