package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// envDatabaseURL names an existing server for SharedURL to use instead of starting one.
const envDatabaseURL = "SKIPLOCK_TEST_DATABASE_URL"

var shared struct {
	sync.Mutex
	server     *Server // the throwaway shared server, if started
	externalOK bool    // the server of envDatabaseURL answered
}

// SharedURL returns the connection string of the server this test process shares between its
// tests: the server named by $SKIPLOCK_TEST_DATABASE_URL if set (it must answer, or the test
// fails), else a throwaway primary started on first use and stopped by StopShared. A failed
// start fails the test; the next call tries again. Tests that share the server should work in
// their own schema (NewSchema) and must not restart it or terminate others' sessions.
func SharedURL(t TB) string {
	t.Helper()
	shared.Lock()
	defer shared.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), helperTimeout)
	defer cancel()
	if url := os.Getenv(envDatabaseURL); url != "" {
		if !shared.externalOK {
			if err := ping(ctx, url); err != nil {
				t.Fatalf("pgtest: %s is set, but its server does not answer: %v", envDatabaseURL, err)
				return ""
			}
			shared.externalOK = true
		}
		return url
	}
	if shared.server == nil {
		s, err := StartPrimary(ctx, nil)
		if err != nil {
			t.Fatalf("%v (or set %s to use an existing server)", err, envDatabaseURL)
			return ""
		}
		shared.server = s
	}
	return shared.server.ConnString("postgres")
}

// StopShared closes the throwaway shared server if SharedURL started one; call it from TestMain
// after m.Run. A later SharedURL starts a new one.
func StopShared() {
	shared.Lock()
	defer shared.Unlock()
	if shared.server != nil {
		_ = shared.server.Close()
		shared.server = nil
	}
}

// ping connects to connString and runs a trivial query.
func ping(ctx context.Context, connString string) error {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return conn.Ping(ctx)
}

// maxIdentifierLen is PostgreSQL's limit (NAMEDATALEN-1) on identifier length in bytes.
const maxIdentifierLen = 63

// NewSchema creates a new schema on the server of connString, named after the test plus a random
// suffix (only [a-z0-9_], at most 63 bytes, e.g. "t_testfoo_sub_3fa4c2d1"), drops it with
// everything in it when the test ends, and returns its name. It fails the test if the schema
// cannot be created; a failed drop is logged.
func NewSchema(t TB, connString string) string {
	t.Helper()
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	name := schemaName(t.Name(), hex.EncodeToString(suffix[:]))
	ident := pgx.Identifier{name}.Sanitize()
	if err := execOnce(connString, "CREATE SCHEMA "+ident); err != nil {
		t.Fatalf("pgtest: create schema %s: %v", name, err)
		return ""
	}
	t.Cleanup(func() {
		if err := execOnce(connString, "DROP SCHEMA IF EXISTS "+ident+" CASCADE"); err != nil {
			t.Logf("pgtest: drop schema %s: %v", name, err)
		}
	})
	return name
}

// execOnce runs one statement on a new connection.
func execOnce(connString, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// schemaName derives a schema name from a test name: lower case, runs of other characters than
// [a-z0-9] turned into one "_", prefixed with "t_" and suffixed with "_"+suffix, cut to fit in
// maxIdentifierLen bytes.
func schemaName(testName, suffix string) string {
	var b strings.Builder
	underscore := true // no leading "_"
	for _, r := range strings.ToLower(testName) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			underscore = false
		} else if !underscore {
			b.WriteByte('_')
			underscore = true
		}
	}
	base := strings.TrimSuffix(b.String(), "_")
	if room := maxIdentifierLen - len("t_") - len("_") - len(suffix); len(base) > room {
		base = strings.TrimSuffix(base[:max(room, 0)], "_")
	}
	if base == "" {
		return fmt.Sprintf("t_%s", suffix)
	}
	return fmt.Sprintf("t_%s_%s", base, suffix)
}
