package pgtest

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// tryConnect opens a connection, closed when the test ends, or returns the error.
func tryConnect(t *testing.T, connString string) (*pgx.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn, nil
}

// requireAuthFails checks that connecting with connString fails with invalid_password.
func requireAuthFails(t *testing.T, connString string) {
	t.Helper()
	_, err := tryConnect(t, connString)
	requireSQLState(t, err, "28P01")
}

// requireNoSecret checks that the server log does not hold secret.
func requireNoSecret(t *testing.T, s *Server, secret string) {
	t.Helper()
	b, err := os.ReadFile(s.logPath)
	require.NoError(t, err)
	require.NotContains(t, string(b), secret, "the server log holds a password")
}

func TestSetRolePasswordRotation(t *testing.T) {
	t.Parallel()
	s := NewPrimary(t, &Options{PasswordRoles: []string{"app"}})
	logOnFailure(t, s)
	ctx := testCtx(t)
	const pw1, pw2 = "first-secret-1", "second-secret-2"

	// A password role without its role yet cannot log in at all.
	requireAuthFails(t, s.ConnStringAs("app", pw1, ""))

	require.NoError(t, s.SetRolePassword(ctx, "app", pw1))
	old, err := tryConnect(t, s.ConnStringAs("app", pw1, ""))
	require.NoError(t, err)
	var super bool
	require.NoError(t, old.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&super))
	require.True(t, super, "the role can run migrations")
	_, err = old.Exec(ctx, "CREATE TABLE t (v int)")
	require.NoError(t, err)
	requireAuthFails(t, s.ConnStringAs("app", "wrong", ""))
	requireAuthFails(t, s.ConnStringAs("app", "", ""))

	require.NoError(t, s.SetRolePassword(ctx, "app", pw2))
	requireAuthFails(t, s.ConnStringAs("app", pw1, ""))
	conn, err := tryConnect(t, s.ConnStringAs("app", pw2, ""))
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "INSERT INTO t VALUES (2)")
	require.NoError(t, err)
	// The connection opened with the old password stays usable.
	_, err = old.Exec(ctx, "INSERT INTO t VALUES (1)")
	require.NoError(t, err)

	// Setting the same password again is fine; other users keep trust authentication.
	require.NoError(t, s.SetRolePassword(ctx, "app", pw2))
	_, err = tryConnect(t, s.ConnStringAs("app", pw2, ""))
	require.NoError(t, err)
	execSQL(t, s.ConnString(""), "CREATE ROLE other LOGIN")
	_, err = tryConnect(t, s.ConnStringAs("other", "anything", ""))
	require.NoError(t, err)
	_, err = tryConnect(t, s.ConnStringAs("postgres", "anything", ""))
	require.NoError(t, err)

	requireNoSecret(t, s, pw1)
	requireNoSecret(t, s, pw2)
}

func TestSetRolePasswordQuotes(t *testing.T) {
	t.Parallel()
	// Names and passwords that break naive quoting.
	const hostile = `Ap'p; DROP ROLE postgres; --`
	const pw = `p'w"\$$; DROP ROLE postgres; --`
	const quoted = `say "hi"` // cannot be a password role (pg_hba.conf), but can get a password
	s := NewPrimary(t, &Options{PasswordRoles: []string{hostile}})
	logOnFailure(t, s)
	ctx := testCtx(t)

	require.NoError(t, s.SetRolePassword(ctx, hostile, pw))
	conn, err := tryConnect(t, s.ConnStringAs(hostile, pw, ""))
	require.NoError(t, err)
	var user string
	require.NoError(t, conn.QueryRow(ctx, "SELECT current_user").Scan(&user))
	require.Equal(t, hostile, user)
	requireAuthFails(t, s.ConnStringAs(hostile, pw[:len(pw)-1], ""))

	require.NoError(t, s.SetRolePassword(ctx, quoted, pw))
	n, err := queryInt(ctx, s.ConnString(""), "SELECT count(*) FROM pg_roles WHERE rolname = ANY($1) OR rolname = 'postgres'", []string{hostile, quoted})
	require.NoError(t, err)
	require.EqualValues(t, 3, n, "both roles exist, postgres too")
	requireNoSecret(t, s, pw)
}

func TestPasswordInputErrors(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	for _, roles := range [][]string{{"postgres"}, {`a"b`}, {"a\nb"}, {""}, {strings.Repeat("r", 64)}} {
		_, err := StartPrimary(ctx, &Options{PasswordRoles: roles})
		require.ErrorIs(t, err, ErrInvalidRole, "%q", roles)
		require.ErrorContains(t, err, "Options.PasswordRoles")
	}

	primary, standby := NewPair(t, nil)
	require.ErrorIs(t, primary.SetRolePassword(ctx, "", "pw"), ErrInvalidRole)
	require.ErrorIs(t, primary.SetRolePassword(ctx, strings.Repeat("r", 64), "pw"), ErrInvalidRole)
	require.ErrorIs(t, primary.SetRolePassword(ctx, "a\x00b", "pw"), ErrInvalidRole)
	require.ErrorIs(t, primary.SetRolePassword(ctx, "app", ""), ErrInvalidPassword)
	require.ErrorIs(t, primary.SetRolePassword(ctx, "app", "a\x00b"), ErrInvalidPassword)
	// A standby refuses; the error names the role but never the password.
	err := standby.SetRolePassword(ctx, "app", "s3cret-on-standby")
	requireSQLState(t, err, "25006")
	require.Contains(t, err.Error(), `"app"`)
	require.NotContains(t, err.Error(), "s3cret-on-standby")
}

// TestPasswordRolesAcrossFailover: a replica started without Options of its own requires the
// primary's password roles, gets their passwords by replication, and keeps requiring them
// once promoted.
func TestPasswordRolesAcrossFailover(t *testing.T) {
	t.Parallel()
	primary := NewPrimary(t, &Options{PasswordRoles: []string{"app"}})
	ctx := testCtx(t)
	replica, err := primary.StartReplica(ctx, nil)
	require.NoError(t, err)
	t.Cleanup(func() { closeInCleanup(t, replica) })
	logOnFailure(t, primary, replica)
	require.Equal(t, []string{"app"}, replica.opts.PasswordRoles)

	require.NoError(t, primary.SetRolePassword(ctx, "app", "pw-1"))
	require.NoError(t, replica.waitStreaming(ctx, primary))
	conn, err := tryConnect(t, replica.ConnStringAs("app", "pw-1", ""))
	require.NoError(t, err, "the password reaches the replica by replication")
	requireAuthFails(t, replica.ConnStringAs("app", "wrong", ""))

	require.NoError(t, primary.Kill())
	require.NoError(t, replica.Promote(ctx))
	_, err = conn.Exec(ctx, "CREATE TABLE t (v int)")
	require.NoError(t, err, "a session opened on the standby writes once it is promoted")
	requireAuthFails(t, replica.ConnStringAs("app", "wrong", ""))
	require.NoError(t, replica.SetRolePassword(ctx, "app", "pw-2"))
	requireAuthFails(t, replica.ConnStringAs("app", "pw-1", ""))
	c2, err := tryConnect(t, replica.ConnStringAs("app", "pw-2", ""))
	require.NoError(t, err)
	_, err = c2.Exec(ctx, "INSERT INTO t VALUES (1)")
	require.NoError(t, err)

	// The old primary, rewound into a standby, keeps its own password roles and gets the new
	// password.
	require.NoError(t, primary.DemoteToStandby(ctx, replica))
	requireAuthFails(t, primary.ConnStringAs("app", "pw-1", ""))
	_, err = tryConnect(t, primary.ConnStringAs("app", "pw-2", ""))
	require.NoError(t, err)
}
