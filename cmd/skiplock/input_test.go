package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/internal/pgtest"
)

func TestBadInvocation(t *testing.T) {
	t.Parallel()
	d := newDB(t, true)
	ids := d.enqueue("keep", 2)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown subcommand", []string{"migrate", "sideways"}, `unknown command "sideways"`},
		{"group alone", []string{"dead"}, "needs a subcommand"},
		{"unknown flag", []string{"stats", "--colour"}, "unknown flag: --colour"},
		{"bad flag value", []string{"stats", "--timeout", "soon"}, "invalid argument"},
		{"negative timeout", []string{"stats", "--timeout", "-1s"}, "--timeout must be positive"},
		{"reserved schema", []string{"--schema", "pg_catalog", "stats"}, "--schema"},
		{"schema too long", []string{"--schema", strings.Repeat("s", 64), "stats"}, "--schema"},
		{"control character in queue", []string{"pause", "evil\x1b]0;pwned\x07"}, "invalid queue"},
		{"newline and sql in queue", []string{"pause", "q'\n; DROP TABLE batch; --"}, "invalid queue"},
		{"leading space in queue", []string{"stats", " keep"}, "invalid queue"},
		{"hostile queue for requeue", []string{"dead", "requeue", "--queue", "x\ty", "1"}, "invalid queue"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := d.run(tc.args...)
			require.Equal(t, exitUsage, r.code, "stdout: %s stderr: %s", r.stdout, r.stderr)
			require.Contains(t, r.stderr, tc.want)
			require.Empty(t, r.stdout)
			require.NotContains(t, r.stderr, "\x1b", "control characters are escaped in errors")
		})
	}
	// Nothing changed.
	require.Equal(t, 2, d.count("WHERE id = ANY ($1) AND state = 'available'", ids))
	var settings int
	require.NoError(t, d.pool.QueryRow(testContext(t), "SELECT count(*) FROM "+d.q("queue_setting")).Scan(&settings))
	require.Zero(t, settings)

	// A hostile but valid schema name is quoted, not run: it has no tables.
	r := d.run("--schema", `x"; DROP TABLE batch; --`, "stats")
	require.Equal(t, exitFailed, r.code, r.stderr)
	require.Contains(t, r.stderr, "does not exist")
	require.Equal(t, 2, d.count(""))
}

func TestMissingDSN(t *testing.T) {
	t.Parallel()
	r := runEnv(t, cliEnv(), "stats")
	require.Equal(t, exitUsage, r.code)
	require.Contains(t, r.stderr, "--dsn")
	require.Contains(t, r.stderr, "DATABASE_URL")
	require.Empty(t, r.stdout)
}

// TestPasswordNeverPrinted runs failing commands with a password in the DSN
// and requires that it appears nowhere in their output.
func TestPasswordNeverPrinted(t *testing.T) {
	t.Parallel()
	const role = "operator"
	srv := pgtest.NewPrimary(t, &pgtest.Options{PasswordRoles: []string{role}})
	const password = "Sup3r-S3cret-pw"
	require.NoError(t, srv.SetRolePassword(testContext(t), role, password))
	wrong := "Wr0ng-S3cret-pw"

	for _, tc := range []struct {
		name string
		dsn  string
		code int
	}{
		{"wrong password", srv.ConnStringAs(role, wrong, ""), exitFailed},
		{"nothing listening", "postgres://" + role + ":" + wrong + "@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=5", exitFailed},
		{"malformed url", "postgres://" + role + ":" + wrong + "@127.0.0.1:notaport/postgres", exitUsage},
		{"malformed query", "postgres://" + role + ":" + wrong + "@127.0.0.1:1/postgres?sslmode=bogus", exitUsage},
		{"key value", "host=127.0.0.1 port=1 user=" + role + " password=" + wrong + " connect_timeout=5 sslmode=disable", exitFailed},
		{"key value quoted", "host=127.0.0.1 port=1 user=" + role + " password='" + wrong + " x' sslmode=disable", exitFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, how := range []string{"flag", "env"} {
				var r result
				if how == "flag" {
					r = runEnv(t, cliEnv(), "--dsn", tc.dsn, "--timeout", "10s", "stats")
				} else {
					r = runEnv(t, cliEnv("DATABASE_URL="+tc.dsn), "--timeout", "10s", "migrate", "status")
				}
				require.Equal(t, tc.code, r.code, "%s: %s", how, r.stderr)
				require.NotEmpty(t, r.stderr)
				for _, out := range []string{r.stdout, r.stderr} {
					require.NotContains(t, out, wrong, how)
					require.NotContains(t, out, "Wr0ng", how)
				}
			}
		})
	}

	// The right password works, and is not printed either.
	r := runEnv(t, cliEnv("DATABASE_URL="+srv.ConnStringAs(role, password, "")), "migrate", "status")
	require.Equal(t, 0, r.code, r.stderr)
	require.NotContains(t, r.stdout+r.stderr, password)
	// A command that fails after connecting: the schema has no tables.
	r = runEnv(t, cliEnv("DATABASE_URL="+srv.ConnStringAs(role, password, "")), "stats")
	require.Equal(t, exitFailed, r.code)
	require.NotContains(t, r.stdout+r.stderr, password)
}
