package migrations

import (
	"sort"
	"strings"
)

// The migrator's own statements. "{schema}" is replaced by the quoted schema
// name, the only substitution; everything else is a positional parameter.
const (
	// Transaction-scoped, so it is released at commit or rollback. The key is
	// per schema: migrators of different schemas do not wait for each other.
	sqlLock = `SELECT pg_advisory_xact_lock(hashtextextended('skiplock.migrations:' || $1, 0))`

	sqlPrepare = `CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.skiplock_migration (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)`

	sqlVersionTableExists = `SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relname = 'skiplock_migration')`

	sqlListVersions = `SELECT version, applied_at FROM {schema}.skiplock_migration ORDER BY version`

	sqlCurrent = `SELECT coalesce(max(version), 0),
    coalesce(bool_or(version = $1), false)
FROM {schema}.skiplock_migration`

	sqlRecord = `INSERT INTO {schema}.skiplock_migration (version, name) VALUES ($1, $2)`

	sqlForget = `DELETE FROM {schema}.skiplock_migration WHERE version = $1`
)

func (m *Migrator) sql(q string) string {
	return strings.ReplaceAll(q, "{schema}", m.quoted)
}

func sortStatus(s []Status) {
	sort.Slice(s, func(i, j int) bool { return s[i].Version < s[j].Version })
}
