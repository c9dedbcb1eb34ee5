// Package pgtest starts throwaway, real PostgreSQL servers for skiplock's tests, benchmarks and
// examples, and a TCP proxy that stands in for a cluster endpoint.
//
// Nothing here is a fake: a [Server] is a postmaster started from the machine's server binaries
// (initdb, postgres, pg_ctl, pg_basebackup, pg_rewind; see [BinDir]) on a free 127.0.0.1 port,
// with trust authentication for the user "postgres". A primary is a copy of an initdb'd template
// data directory cached per binary version; a replica is a pg_basebackup of its primary that
// streams from it. Servers can be promoted, demoted to read-only (the quick demotion that makes
// open sessions fail writes with SQLSTATE 25006), turned into a standby of another server (with
// pg_rewind), restarted, stopped, killed and closed. A [Proxy] forwards TCP connections to a
// target that can be switched (like a DNS change), delayed, reset or blackholed.
//
// # Losing commits
//
// The read-only demotion keeps every commit. To lose acknowledged commits for real, as an
// asynchronous replica does in a failover, cut the standby off first:
//
//	standby.CutReplication(ctx)           // the standby receives no more WAL
//	// ... commits on primary, acknowledged ...
//	primary.Kill()                        // crash: immediate shutdown
//	standby.Promote(ctx)                  // the new primary lacks those commits
//	primary.DemoteToStandby(ctx, standby) // pg_rewind discards them on the old primary
//
// after which the roles can be swapped and the sequence repeated. [Server.ResumeReplication]
// undoes a cut, [Server.ReplicateThrough] sends the WAL stream through a [Proxy] so that it can
// be delayed or held, and [Server.WALPosition] tells how far a server has written or replayed.
// Pausing replay (pg_wal_replay_pause) loses nothing: promotion replays all received WAL first.
//
// # Passwords
//
// The roles listed in [Options].PasswordRoles must authenticate with scram-sha-256 over TCP;
// everyone else is trusted. [Server.SetRolePassword] creates such a role (LOGIN SUPERUSER) or
// rotates its password, which takes effect for new connections at once; [Server.ConnStringAs]
// builds a URL with credentials. A replica requires the passwords of its primary's roles unless
// its own Options list others, and gets the passwords themselves by replication.
//
// PostgreSQL refuses to run as root; when the process runs as root every server binary is run
// as the "postgres" system user.
//
// # Files and processes
//
// Every server lives in its own directory under one root,
// $TMPDIR/skiplock-pgtest-<euid>. Each directory records the process that created it; the first
// server started by a process stops the postmasters of directories whose creator is gone (a test
// binary that was killed) and removes those directories. Postmasters are started with a
// parent-death signal, so they also go down when the test process dies. Only processes named in
// a directory's own postmaster.pid and whose command line names that directory are ever
// signalled.
//
// # Tests
//
// Test helpers take the small [TB] interface rather than importing package testing, so examples
// and the bench binary can import this package. [NewPrimary], [NewPair] and [NewTestProxy] tie a
// server or proxy to a test's cleanup. [SharedURL] gives the tests of one package one shared
// server (or the server named by SKIPLOCK_TEST_DATABASE_URL), and [NewSchema] a fresh schema on
// it per test so tests can run in parallel. A package that uses SharedURL stops the shared server
// from TestMain, before checking for leaked goroutines:
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		pgtest.StopShared()
//		if code == 0 {
//			if err := goleak.Find(); err != nil {
//				fmt.Fprintln(os.Stderr, err)
//				code = 1
//			}
//		}
//		os.Exit(code)
//	}
//
// When no server binaries are installed and SKIPLOCK_TEST_DATABASE_URL is unset, the helpers fail
// the test (they do not skip it) with a message saying what to install.
package pgtest
