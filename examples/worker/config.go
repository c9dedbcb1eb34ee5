package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zapcore"

	"github.com/skiplock/skiplock/queue"
	"github.com/skiplock/skiplock/skiplockprom"
)

// config is the worker's configuration, from flags with environment
// fallbacks (see envOf). A flag given on the command line wins over its
// environment variable, which wins over the default.
type config struct {
	databaseURL     string
	queue           string
	schema          string
	concurrency     int
	lease           time.Duration
	drainTimeout    time.Duration
	httpAddr        string
	migrate         bool
	owner           string
	handlerDuration time.Duration
	startTimeout    time.Duration
	probeInterval   time.Duration
	pollInterval    time.Duration
	statsInterval   time.Duration
	logLevel        zapcore.Level
}

// Defaults of the worker's flags.
const (
	queueDefault        = "events"
	httpAddrDefault     = ":8080"
	drainTimeoutDefault = 20 * time.Second
	startTimeoutDefault = 30 * time.Second
)

// envOf maps each flag to the environment variable it falls back to.
var envOf = map[string]string{
	"database-url":     "DATABASE_URL",
	"queue":            "SKIPLOCK_QUEUE",
	"schema":           "SKIPLOCK_SCHEMA",
	"concurrency":      "SKIPLOCK_CONCURRENCY",
	"lease":            "SKIPLOCK_LEASE",
	"drain-timeout":    "SKIPLOCK_DRAIN_TIMEOUT",
	"http-addr":        "SKIPLOCK_HTTP_ADDR",
	"migrate":          "SKIPLOCK_MIGRATE",
	"owner":            "SKIPLOCK_OWNER",
	"handler-duration": "SKIPLOCK_HANDLER_DURATION",
	"start-timeout":    "SKIPLOCK_START_TIMEOUT",
	"probe-interval":   "SKIPLOCK_PROBE_INTERVAL",
	"poll-interval":    "SKIPLOCK_POLL_INTERVAL",
	"stats-interval":   "SKIPLOCK_STATS_INTERVAL",
	"log-level":        "SKIPLOCK_LOG_LEVEL",
}

// errUsage marks configuration errors: the process exits with exitUsage.
var errUsage = errors.New("bad configuration")

// parseConfig reads the flags in args, then the environment (through
// getenv) for every flag not given. Errors match errUsage and name the flag
// and its variable; they never contain the database URL.
func parseConfig(args []string, getenv func(string) string, usageOut io.Writer) (*config, error) {
	c := &config{logLevel: zapcore.InfoLevel}
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(usageOut)
	fs.StringVar(&c.databaseURL, "database-url", "",
		"PostgreSQL URL or keyword/value string of the cluster endpoint (required; prefer the environment, so the password stays off the command line)")
	fs.StringVar(&c.queue, "queue", queueDefault, "queue to work")
	fs.StringVar(&c.schema, "schema", queue.SchemaDefault, "schema that holds skiplock's tables")
	fs.IntVar(&c.concurrency, "concurrency", queue.ConcurrencyDefault, "handlers running at once")
	fs.DurationVar(&c.lease, "lease", queue.LeaseDurationDefault, "lease of a claimed batch, renewed while its handler runs")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", drainTimeoutDefault,
		"on SIGTERM/SIGINT, how long running handlers may take to finish before they are cancelled and their batches released")
	fs.StringVar(&c.httpAddr, "http-addr", httpAddrDefault, "address of /healthz, /readyz and /metrics; empty turns HTTP off")
	fs.BoolVar(&c.migrate, "migrate", false, "apply the schema migrations before working (safe from every copy at once)")
	fs.StringVar(&c.owner, "owner", "", "owner recorded with each lease (default <hostname>/<pid>)")
	fs.DurationVar(&c.handlerDuration, "handler-duration", 0, "EXAMPLE HANDLER: how long each batch takes to \"process\"")
	fs.DurationVar(&c.startTimeout, "start-timeout", startTimeoutDefault, "how long to wait at start for a writer to answer")
	fs.DurationVar(&c.probeInterval, "probe-interval", 0, "how often the pool checks who the writer is (default 1s)")
	fs.DurationVar(&c.pollInterval, "poll-interval", 0, "how often an idle runner looks for work without a wake-up (default 1s)")
	fs.DurationVar(&c.statsInterval, "stats-interval", skiplockprom.StatsIntervalDefault,
		"how long /metrics reuses the queue depth and age figures of one query (0 means the default)")
	fs.TextVar(&c.logLevel, "log-level", zapcore.InfoLevel, "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: worker [flags]\n\nEach flag falls back to its environment variable when not given.\n\n")
		fs.VisitAll(func(f *flag.Flag) {
			fmt.Fprintf(fs.Output(), "  -%s (%s)\n    \t%s", f.Name, envOf[f.Name], f.Usage)
			if f.DefValue != "" && f.DefValue != "0s" && f.DefValue != "false" {
				fmt.Fprintf(fs.Output(), " (default %s)", f.DefValue)
			}
			fmt.Fprintln(fs.Output())
		})
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", errUsage, scrubURL(err.Error(), c.databaseURL))
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		env := envOf[f.Name]
		if given[f.Name] || env == "" {
			return
		}
		v := getenv(env)
		if v == "" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			shown := v
			if f.Name == "database-url" {
				shown = "(hidden)"
			}
			errs = append(errs, fmt.Errorf("%s=%s: invalid value for -%s: %w", env, shown, f.Name, err))
		}
	})
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", errUsage, errors.Join(errs...))
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", errUsage, err)
	}
	return c, nil
}

// validate checks what the flag package does not. The queue's own limits
// (concurrency, lease) are checked again by queue.NewRunner.
func (c *config) validate() error {
	switch {
	case strings.TrimSpace(c.databaseURL) == "":
		return errors.New("no database: set DATABASE_URL (or -database-url) to the cluster endpoint, e.g. postgres://user@host:5432/db")
	case c.concurrency < 1 || c.concurrency > queue.MaxConcurrency:
		return fmt.Errorf("-concurrency (SKIPLOCK_CONCURRENCY) %d is outside 1..%d", c.concurrency, queue.MaxConcurrency)
	case c.drainTimeout <= 0:
		return fmt.Errorf("-drain-timeout (SKIPLOCK_DRAIN_TIMEOUT) %s is not positive", c.drainTimeout)
	case c.startTimeout <= 0:
		return fmt.Errorf("-start-timeout (SKIPLOCK_START_TIMEOUT) %s is not positive", c.startTimeout)
	case c.handlerDuration < 0:
		return fmt.Errorf("-handler-duration (SKIPLOCK_HANDLER_DURATION) %s is negative", c.handlerDuration)
	case c.lease < 0 || c.probeInterval < 0 || c.pollInterval < 0 || c.statsInterval < 0:
		return errors.New("-lease, -probe-interval, -poll-interval and -stats-interval must not be negative")
	}
	return nil
}

// poolConfig parses the database URL. Its error never contains the URL:
// pgx's parse errors may quote it (with the password masked, but other
// parts of a malformed URL may still be secret).
func (c *config) poolConfig() (*pgxpool.Config, error) {
	pc, err := pgxpool.ParseConfig(c.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("%w: DATABASE_URL (or -database-url) is not a valid PostgreSQL connection string", errUsage)
	}
	return pc, nil
}

// scrubURL removes the database URL from s, in case a flag error quotes it.
func scrubURL(s, url string) string {
	if url == "" {
		return s
	}
	return strings.ReplaceAll(s, url, "(hidden)")
}

// ownerDefault is the lease owner when -owner is not given, as the queue
// package would choose it.
func ownerDefault() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "worker"
	}
	return fmt.Sprintf("%s/%d", host, os.Getpid())
}
