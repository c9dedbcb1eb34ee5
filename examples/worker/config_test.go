package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/skiplock/skiplock/skiplockprom"
)

func TestParseConfig(t *testing.T) {
	const url = "postgres://app:secret@db.example:5432/app"
	env := func(kv map[string]string) func(string) string {
		return func(k string) string { return kv[k] }
	}
	cases := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, c *config)
	}{
		{name: "defaults", env: map[string]string{"DATABASE_URL": url}, check: func(t *testing.T, c *config) {
			require.Equal(t, url, c.databaseURL)
			require.Equal(t, queueDefault, c.queue)
			require.Equal(t, "skiplock", c.schema)
			require.Equal(t, 16, c.concurrency)
			require.Equal(t, 30*time.Second, c.lease)
			require.Equal(t, drainTimeoutDefault, c.drainTimeout)
			require.Equal(t, httpAddrDefault, c.httpAddr)
			require.False(t, c.migrate)
			require.Equal(t, zapcore.InfoLevel, c.logLevel)
			require.Equal(t, skiplockprom.StatsIntervalDefault, c.statsInterval)
		}},
		{name: "environment", env: map[string]string{
			"DATABASE_URL": url, "SKIPLOCK_QUEUE": "q", "SKIPLOCK_SCHEMA": "s", "SKIPLOCK_CONCURRENCY": "3",
			"SKIPLOCK_LEASE": "1m", "SKIPLOCK_DRAIN_TIMEOUT": "5s", "SKIPLOCK_HTTP_ADDR": ":9", "SKIPLOCK_MIGRATE": "true",
			"SKIPLOCK_OWNER": "me", "SKIPLOCK_HANDLER_DURATION": "2ms", "SKIPLOCK_LOG_LEVEL": "debug",
			"SKIPLOCK_STATS_INTERVAL": "1m30s",
		}, check: func(t *testing.T, c *config) {
			require.Equal(t, "q", c.queue)
			require.Equal(t, "s", c.schema)
			require.Equal(t, 3, c.concurrency)
			require.Equal(t, time.Minute, c.lease)
			require.Equal(t, 5*time.Second, c.drainTimeout)
			require.Equal(t, ":9", c.httpAddr)
			require.True(t, c.migrate)
			require.Equal(t, "me", c.owner)
			require.Equal(t, 2*time.Millisecond, c.handlerDuration)
			require.Equal(t, zapcore.DebugLevel, c.logLevel)
			require.Equal(t, 90*time.Second, c.statsInterval)
		}},
		{name: "a flag wins over its variable", args: []string{"-queue", "flagq", "-concurrency", "7", "-migrate=false", "-http-addr", "", "-stats-interval", "2s"},
			env: map[string]string{"DATABASE_URL": url, "SKIPLOCK_QUEUE": "envq", "SKIPLOCK_CONCURRENCY": "3", "SKIPLOCK_MIGRATE": "true", "SKIPLOCK_HTTP_ADDR": ":9",
				"SKIPLOCK_STATS_INTERVAL": "1m"},
			check: func(t *testing.T, c *config) {
				require.Equal(t, "flagq", c.queue)
				require.Equal(t, 7, c.concurrency)
				require.False(t, c.migrate)
				require.Empty(t, c.httpAddr, "an empty flag given on purpose is kept")
				require.Equal(t, 2*time.Second, c.statsInterval)
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig(tc.args, env(tc.env), io.Discard)
			require.NoError(t, err)
			tc.check(t, c)
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	const url = "postgres://app:secret@db.example:5432/app"
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{name: "no database", want: "no database"},
		{name: "bad duration", env: map[string]string{"DATABASE_URL": url, "SKIPLOCK_LEASE": "soon"}, want: "SKIPLOCK_LEASE=soon"},
		{name: "bad bool", env: map[string]string{"DATABASE_URL": url, "SKIPLOCK_MIGRATE": "perhaps"}, want: "SKIPLOCK_MIGRATE=perhaps"},
		{name: "bad level", env: map[string]string{"DATABASE_URL": url, "SKIPLOCK_LOG_LEVEL": "loud"}, want: "SKIPLOCK_LOG_LEVEL=loud"},
		{name: "drain", env: map[string]string{"DATABASE_URL": url}, args: []string{"-drain-timeout", "0s"}, want: "-drain-timeout"},
		{name: "negative duration", env: map[string]string{"DATABASE_URL": url}, args: []string{"-handler-duration", "-1s"}, want: "-handler-duration"},
		{name: "bad stats interval", env: map[string]string{"DATABASE_URL": url, "SKIPLOCK_STATS_INTERVAL": "often"}, want: "SKIPLOCK_STATS_INTERVAL=often"},
		{name: "negative stats interval", env: map[string]string{"DATABASE_URL": url}, args: []string{"-stats-interval", "-1s"}, want: "-stats-interval"},
		{name: "argument", env: map[string]string{"DATABASE_URL": url}, args: []string{"extra"}, want: `unexpected argument "extra"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig(tc.args, func(k string) string { return tc.env[k] }, io.Discard)
			require.ErrorIs(t, err, errUsage)
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), "secret")
		})
	}
}

// TestHealthStates checks the answers that do not depend on the database
// (those that do are tested against a real server in TestHTTPEndpoints).
func TestHealthStates(t *testing.T) {
	stopped := make(chan struct{})
	h := &health{stopped: stopped, log: zap.NewNop()} // no pool: none of these states reaches it
	status := func(f http.HandlerFunc) (int, string) {
		rec := httptest.NewRecorder()
		f(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		return rec.Code, rec.Body.String()
	}
	code, body := status(h.readyz)
	require.Equal(t, 503, code)
	require.Contains(t, body, "starting")
	code, _ = status(h.healthz)
	require.Equal(t, 200, code)

	h.started.Store(true)
	h.draining.Store(true)
	code, body = status(h.readyz)
	require.Equal(t, 503, code)
	require.Contains(t, body, "draining")
	code, _ = status(h.healthz)
	require.Equal(t, 200, code, "live while draining")

	close(stopped)
	code, body = status(h.healthz)
	require.Equal(t, 503, code)
	require.Contains(t, body, "runner stopped")
	code, _ = status(h.readyz)
	require.Equal(t, 503, code)
}
