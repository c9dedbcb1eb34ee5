package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Errors of bad input to the password functions; returned wrapped.
var (
	// ErrInvalidRole reports a role name that cannot be used: empty, longer than 63 bytes,
	// holding a NUL byte, or (in Options.PasswordRoles) one pg_hba.conf cannot name or "postgres".
	ErrInvalidRole = errors.New("pgtest: invalid role name")
	// ErrInvalidPassword reports an empty password or one holding a NUL byte.
	ErrInvalidPassword = errors.New("pgtest: invalid password")
)

// maxRoleNameLen is the longest role name PostgreSQL keeps (NAMEDATALEN-1 bytes); longer names
// are truncated silently, which would make pg_hba.conf and the role disagree.
const maxRoleNameLen = 63

// sqlStateDuplicateObject is the SQLSTATE of CREATE ROLE for a role that exists.
const sqlStateDuplicateObject = "42710"

// checkRoleName reports whether PostgreSQL keeps role as it is.
func checkRoleName(role string) error {
	switch {
	case role == "":
		return fmt.Errorf("%w: empty", ErrInvalidRole)
	case len(role) > maxRoleNameLen:
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidRole, maxRoleNameLen)
	case strings.IndexByte(role, 0) >= 0:
		return fmt.Errorf("%w: holds a NUL byte", ErrInvalidRole)
	}
	return nil
}

// checkPasswordRole reports whether role can be listed in Options.PasswordRoles: a role name
// that a double-quoted pg_hba.conf field can hold (no double quote, no control character), and
// not "postgres", which pgtest itself and replication use without a password.
func checkPasswordRole(role string) error {
	if err := checkRoleName(role); err != nil {
		return err
	}
	if role == "postgres" {
		return fmt.Errorf("%w: %q is pgtest's own superuser and must keep trust authentication", ErrInvalidRole, role)
	}
	if strings.IndexFunc(role, func(r rune) bool { return r == '"' || r < 0x20 || r == 0x7f }) >= 0 {
		return fmt.Errorf("%w: %q holds a double quote or control character, which pg_hba.conf cannot name", ErrInvalidRole, role)
	}
	return nil
}

// hbaFile is the client authentication file in each data directory, rewritten by pgtest from
// the server's Options like confFile.
const hbaFile = "pg_hba.conf"

// hba renders the server's pg_hba.conf: Unix-socket connections are trusted; TCP connections
// from 127.0.0.1 by the PasswordRoles must authenticate with scram-sha-256; every other user,
// replication included, is trusted. The first matching line decides, so the password lines come
// first.
func (o *Options) hba() string {
	var b strings.Builder
	b.WriteString("# Written by pgtest for this server; rewritten when the data directory is copied.\n")
	b.WriteString("local all all trust\n")
	b.WriteString("local replication all trust\n")
	for _, role := range o.PasswordRoles {
		fmt.Fprintf(&b, "host all \"%s\" 127.0.0.1/32 scram-sha-256\n", role)
	}
	b.WriteString("host all all 127.0.0.1/32 trust\n")
	b.WriteString("host replication all 127.0.0.1/32 trust\n")
	return b.String()
}

// SetRolePassword creates role on the server (LOGIN SUPERUSER, so it can run migrations and
// queues) with password, or, if role exists, makes it LOGIN SUPERUSER and changes its password.
// The password is stored as a scram-sha-256 secret; from the commit on, new connections of a
// role in Options.PasswordRoles must present the new password (the old one fails with SQLSTATE
// 28P01), while connections already open stay open. The role name and password are quoted by
// the server (format %I and %L), so any name or password is safe; neither is logged by the
// server, nor put into the returned error.
//
// The server must be a primary (a standby gets the change by replication). An empty or
// too long role, or an empty password, fails with ErrInvalidRole or ErrInvalidPassword. It
// blocks for at most one connection and three statements.
func (s *Server) SetRolePassword(ctx context.Context, role, password string) error {
	if err := s.setRolePassword(ctx, role, password); err != nil {
		return fmt.Errorf("pgtest: set password of role %q on %s: %w", role, s.Name(), err)
	}
	return nil
}

func (s *Server) setRolePassword(ctx context.Context, role, password string) error {
	if err := checkRoleName(role); err != nil {
		return err
	}
	if password == "" {
		return fmt.Errorf("%w: empty", ErrInvalidPassword)
	}
	if strings.IndexByte(password, 0) >= 0 {
		return fmt.Errorf("%w: holds a NUL byte", ErrInvalidPassword)
	}
	params := map[string]string{
		// A failing statement is not copied into the server log, password included.
		"log_min_error_statement": "panic",
		"log_statement":           "none",
		"password_encryption":     "scram-sha-256",
		readOnlyParamName:         "off",
	}
	return s.withConn(ctx, params, func(ctx context.Context, conn *pgx.Conn) error {
		var exists bool
		if err := conn.QueryRow(ctx, sqlRoleExists, role).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			err := execFormatted(ctx, conn, sqlCreateRoleStmt, role, password)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != sqlStateDuplicateObject {
				return err
			}
			// Created meanwhile by someone else: change its password.
		}
		return execFormatted(ctx, conn, sqlAlterRoleStmt, role, password)
	})
}

// execFormatted runs the statement that the query formatSQL, given args, returns. It is for
// utility statements, which take no parameters: the server quotes the arguments.
func execFormatted(ctx context.Context, conn *pgx.Conn, formatSQL string, args ...any) error {
	var stmt string
	if err := conn.QueryRow(ctx, formatSQL, args...).Scan(&stmt); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, stmt)
	return err
}

// ConnStringAs returns a URL to connect to database on the server as role with password,
// without TLS: "postgres://<role>:<password>@127.0.0.1:<port>/<database>?sslmode=disable", with
// role and password escaped. An empty database means "postgres". The URL holds the password:
// keep it out of logs and error messages.
func (s *Server) ConnStringAs(role, password, database string) string {
	if database == "" {
		database = "postgres"
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(role, password),
		Host:     net.JoinHostPort(s.Host(), strconv.Itoa(s.port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// writeHBA writes the client authentication of o into dataDir.
func writeHBA(dataDir string, o *Options, u *osUser) error {
	return u.writeFile(filepath.Join(dataDir, hbaFile), []byte(o.hba()), 0o600)
}
