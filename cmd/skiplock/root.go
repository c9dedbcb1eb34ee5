package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/skiplock/skiplock/internal/sqlident"
	"github.com/skiplock/skiplock/queue"
)

// Defaults of the global flags.
const (
	// envDSN is read when --dsn is not given.
	envDSN = "DATABASE_URL"
	// timeoutDefault bounds a whole command, connecting included.
	timeoutDefault = 30 * time.Second
	// applicationName is set on the CLI's connections (unless the DSN sets
	// one), so operators can tell them apart in pg_stat_activity.
	applicationName = "skiplock-cli"
)

// app is one invocation: the global flags, where output goes, and the
// secrets that must never be printed.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string

	dsn     string
	schema  string
	json    bool
	timeout time.Duration

	secrets []string // the DSN and its password, in every spelling we know of
	ran     bool     // a command's RunE started (errors before it are usage errors)
}

// run executes the CLI with args and returns the process's exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{stdout: stdout, stderr: stderr, getenv: getenv}
	a.noteSecrets(args)
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	code := exitCode(err)
	if !a.ran {
		var ee *exitError
		if !errors.As(err, &ee) {
			code = exitUsage // cobra's own: unknown command or flag, wrong number of arguments
		}
	}
	if !errors.Is(err, errCheckFailed) {
		fmt.Fprintln(stderr, "skiplock: "+printable(a.redact(err.Error())))
		if code == exitUsage && !a.ran {
			fmt.Fprintln(stderr, "Run 'skiplock --help' for usage.")
		}
	}
	return code
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "skiplock",
		Short: "Operate skiplock queues: migrations, stats, inspection, dead letters, pause, leases, health",
		Long: `skiplock operates the PostgreSQL queues of the skiplock library.

The database comes from --dsn or, when that is not given, from $DATABASE_URL
(prefer the variable: a flag is visible to other users in the process list).
Passwords are never printed. Read commands print an aligned table, or JSON
with --json.

Exit codes: 0 done; 1 failed; 2 bad invocation (nothing changed);
3 not found (nothing changed); 4 a check failed (migrate validate, doctor).`,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			a.ran = true
			return nil
		},
	}
	f := root.PersistentFlags()
	f.StringVar(&a.dsn, "dsn", "", "PostgreSQL connection string (default $"+envDSN+")")
	f.StringVar(&a.schema, "schema", queue.SchemaDefault, "schema holding skiplock's tables")
	f.BoolVar(&a.json, "json", false, "print machine-readable JSON instead of a table")
	f.DurationVar(&a.timeout, "timeout", timeoutDefault, "bound on the whole command, connecting included")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &exitError{code: exitUsage, err: err}
	})
	root.AddCommand(
		a.migrateCommand(),
		a.statsCommand(),
		a.listCommand(),
		a.showCommand(),
		a.deadCommand(),
		a.pauseCommand("pause"),
		a.pauseCommand("resume"),
		a.releaseLeasesCommand(),
		a.doctorCommand(),
	)
	return root
}

// commandContext bounds a command by --timeout.
func (a *app) commandContext(cmd *cobra.Command) (context.Context, context.CancelFunc, error) {
	if a.timeout <= 0 {
		return nil, nil, usageErrorf("--timeout must be positive, not %s", a.timeout)
	}
	if _, err := sqlident.Schema(a.schema); err != nil {
		return nil, nil, usageErrorf("--schema %q: %v", truncateCell(a.schema, 64), err)
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
	return ctx, cancel, nil
}

// connConfig parses the DSN from --dsn or $DATABASE_URL. Its errors never
// hold the DSN's text.
func (a *app) connConfig() (*pgxpool.Config, error) {
	dsn, from := a.dsn, "--dsn"
	if dsn == "" {
		dsn, from = a.getenv(envDSN), "$"+envDSN
	}
	if dsn == "" {
		return nil, usageErrorf("no database: pass --dsn or set %s", envDSN)
	}
	a.addSecret(dsn)
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's message quotes the connection string, with what it
		// recognizes as a password masked; a malformed one can hide a
		// password from it, so the text is left out altogether.
		return nil, usageErrorf("cannot parse the connection string from %s (its text is not shown, as it may hold a password): %s", from, a.parseReason(err))
	}
	a.addSecret(cfg.ConnConfig.Password)
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = applicationName
	}
	cfg.MaxConns = 2
	return cfg, nil
}

// parseReason is the part of a pgx parse error that does not quote the
// connection string: pgx's reason, which follows the quoted string, unless
// it comes from the URL parser (whose errors quote the URL).
func (a *app) parseReason(err error) string {
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return "invalid"
	}
	var ue *url.Error
	if errors.As(pe, &ue) {
		return "not a valid URL"
	}
	msg := pe.Error()
	i := strings.LastIndex(msg, "`: ")
	if i < 0 {
		return "invalid"
	}
	return a.redact(msg[i+len("`: "):])
}

// addSecret notes a string never to print, also as it appears escaped in
// a URL.
func (a *app) addSecret(s string) {
	if s == "" {
		return
	}
	a.secrets = append(a.secrets, s, url.QueryEscape(s), url.PathEscape(s), (&url.URL{User: url.UserPassword("", s)}).User.String()[1:])
}

// noteSecrets notes, before anything can fail, every connection string
// the invocation may carry: $DATABASE_URL, the value of --dsn, and any
// argument that looks like one (a DSN given to the wrong flag), with the
// passwords in them.
func (a *app) noteSecrets(args []string) {
	candidates := []string{a.getenv(envDSN)}
	for i, arg := range args {
		switch {
		case arg == "--dsn" && i+1 < len(args):
			candidates = append(candidates, args[i+1])
		case strings.HasPrefix(arg, "--dsn="):
			candidates = append(candidates, strings.TrimPrefix(arg, "--dsn="))
		case strings.Contains(arg, "://") || strings.Contains(arg, "password"):
			candidates = append(candidates, arg)
		}
	}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		a.addSecret(c)
		if cfg, err := pgconn.ParseConfig(c); err == nil {
			a.addSecret(cfg.Password)
		}
		if u, err := url.Parse(c); err == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok {
				a.addSecret(pw)
			}
		}
	}
}

// printable escapes control characters (other than newlines and tabs) in a
// message for the terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || !unicode.IsControl(r) {
			return r
		}
		return '?'
	}, s)
}

// redact masks every known secret in s.
func (a *app) redact(s string) string {
	for _, secret := range a.secrets {
		if secret != "" {
			s = strings.ReplaceAll(s, secret, "xxxxx")
		}
	}
	return s
}

// pool connects a small pool (for the queue package's calls).
func (a *app) pool(ctx context.Context) (*pgxpool.Pool, error) {
	cfg, err := a.connConfig()
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	return pool, nil
}

// conn opens one connection (for commands that need one session).
func (a *app) conn(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := a.connConfig()
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

// client connects and returns a queue Client on the pool. Call the
// returned function when done.
func (a *app) client(ctx context.Context) (*queue.Client, func(), error) {
	pool, err := a.pool(ctx)
	if err != nil {
		return nil, nil, err
	}
	c, err := queue.New(pool, &queue.Config{
		Schema:      a.schema,
		OpTimeout:   max(a.timeout, 100*time.Millisecond),
		RetryWindow: min(a.timeout, queue.RetryWindowDefault),
	})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return c, func() {
		_ = c.Close()
		pool.Close()
	}, nil
}

// connect checks the global flags, connects and returns the command's
// context and a client; done closes both and cancels the context.
func (a *app) connect(cmd *cobra.Command) (context.Context, *queue.Client, func(), error) {
	ctx, cancel, err := a.commandContext(cmd)
	if err != nil {
		return nil, nil, nil, err
	}
	c, closeClient, err := a.client(ctx)
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	return ctx, c, func() {
		closeClient()
		cancel()
	}, nil
}

// requireFlag rejects an empty required flag before connecting.
func requireFlag(name, value string) error {
	if value == "" {
		return usageErrorf("--%s is required", name)
	}
	return nil
}

// groupRunE makes a command that only groups subcommands fail, with exit
// code 2, when it is run without a known subcommand (cobra would print its
// help and exit 0).
func groupRunE(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	var names []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() {
			names = append(names, c.Name())
		}
	}
	return usageErrorf("%q needs a subcommand: %s", cmd.CommandPath(), strings.Join(names, ", "))
}
