package pgtest

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Options configures a server started by StartPrimary or StartReplica. A nil *Options means all
// defaults.
type Options struct {
	// Fsync turns on fsync (and syncing by initdb, pg_basebackup and pg_rewind). With it off a
	// server still survives its own crash (a killed postmaster loses no committed transaction:
	// synchronous_commit stays on); only an operating system crash can lose data, and test data
	// does not outlive the test. Defaults to false.
	Fsync bool

	// Settings are extra postgresql.conf parameters, name to value, applied after pgtest's own
	// (so they override them). Values are quoted as needed; names must be plain parameter
	// names. Defaults to none.
	Settings map[string]string

	// Logf, if set, receives the tail of the server log when a server fails to start. Defaults
	// to nil (the tail is still part of the returned error).
	Logf func(format string, args ...any)

	// PasswordRoles are login roles that must authenticate with a password (scram-sha-256) over
	// loopback TCP; every other connection stays trusted. SetRolePassword creates a role and sets
	// its password.
	// Defaults to none.
	//
	// NOTE(lab): minimal stand-in in the lab branch until pgtest's own version lands.
	PasswordRoles []string
}

// confFile is the file in each data directory, included from postgresql.conf, that holds the
// server's settings. It is rewritten when a data directory is created from another one
// (template, base backup, rewind), so every server runs with its own Options.
const confFile = "pgtest.conf"

// dataDirName is the data directory inside a server's work directory.
const dataDirName = "data"

// baseSettings are the settings of every server. full_page_writes stays on even without fsync:
// pg_rewind refuses a source server without it. wal_log_hints lets pg_rewind run on any server;
// wal_keep_size keeps enough WAL for replicas and rewound servers to catch up without slots.
// wal_retrieve_retry_interval makes standbys reconnect quickly after their primary restarts.
var baseSettings = [][2]string{
	{"wal_level", "replica"},
	{"max_wal_senders", "10"},
	{"max_replication_slots", "10"},
	{"wal_keep_size", "128MB"},
	{"wal_log_hints", "on"},
	{"full_page_writes", "on"},
	{"synchronous_commit", "on"},
	{"hot_standby", "on"},
	{"wal_retrieve_retry_interval", "250ms"},
	{"max_connections", "200"},
	{"shared_buffers", "32MB"},
	{"log_destination", "stderr"},
	{"logging_collector", "off"},
	{"log_line_prefix", "%m [%p] "},
}

// withDefaults returns a copy of o (nil means the zero Options).
func (o *Options) withDefaults() Options {
	if o == nil {
		return Options{}
	}
	c := *o
	c.Settings = maps.Clone(o.Settings)
	c.PasswordRoles = slices.Clone(o.PasswordRoles)
	return c
}

// validate checks the Settings names.
func (o *Options) validate() error {
	for name := range o.Settings {
		if name == "" || strings.IndexFunc(name, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.')
		}) >= 0 {
			return fmt.Errorf("Options.Settings: invalid parameter name %q", name)
		}
	}
	return nil
}

// conf renders the server's confFile.
func (o *Options) conf() string {
	var b strings.Builder
	b.WriteString("# Written by pgtest for this server; rewritten when the data directory is copied.\n")
	fsync := "off"
	if o.Fsync {
		fsync = "on"
	}
	writeSetting(&b, "fsync", fsync)
	for _, kv := range baseSettings {
		writeSetting(&b, kv[0], kv[1])
	}
	for _, name := range slices.Sorted(maps.Keys(o.Settings)) {
		writeSetting(&b, name, o.Settings[name])
	}
	return b.String()
}

func writeSetting(b *strings.Builder, name, value string) {
	fmt.Fprintf(b, "%s = %s\n", name, quoteConf(value))
}

// quoteConf quotes a postgresql.conf value.
func quoteConf(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(v) + "'"
}

// writeConf writes the settings of o into dataDir.
func writeConf(dataDir string, o *Options, u *osUser) error {
	if err := u.writeFile(filepath.Join(dataDir, confFile), []byte(o.conf()), 0o600); err != nil {
		return err
	}
	return writePasswordHBA(dataDir, o.PasswordRoles, u)
}

// autoConfDropped are the postgresql.auto.conf parameters writeStandbyConf replaces or clears.
// default_transaction_read_only is cleared because a standby is read-only anyway, and a standby
// that is promoted later must take writes.
var autoConfDropped = []string{"primary_conninfo", "primary_slot_name", "default_transaction_read_only"}

// standbyConninfo is the primary_conninfo of a standby of the server on port.
func standbyConninfo(port int) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=disable", port)
}

// writeStandbyConf makes dataDir a standby of the server on primaryPort: standby.signal plus
// primary_conninfo in postgresql.auto.conf (where pg_basebackup -R puts it, and which is read
// after postgresql.conf).
func writeStandbyConf(dataDir string, primaryPort int, u *osUser) error {
	path := filepath.Join(dataDir, "postgresql.auto.conf")
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var b strings.Builder
	for _, line := range strings.SplitAfter(string(old), "\n") {
		if line == "" {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSpace(line), "=")
		if slices.Contains(autoConfDropped, strings.ToLower(strings.TrimSpace(name))) {
			continue
		}
		b.WriteString(line)
		if !strings.HasSuffix(line, "\n") {
			b.WriteString("\n")
		}
	}
	writeSetting(&b, "primary_conninfo", standbyConninfo(primaryPort))
	return errors.Join(
		u.writeFile(path, []byte(b.String()), 0o600),
		u.writeFile(filepath.Join(dataDir, "standby.signal"), nil, 0o600),
	)
}
