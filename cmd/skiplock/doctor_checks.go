package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/skiplock/skiplock/migrations"
)

// doctor runs the checks on one connection.
type doctor struct {
	conn   *pgx.Conn
	schema string
	th     thresholds
	redact func(string) string

	standby bool // learned by the writer check
}

// checkTimeout bounds each check's statements, so one slow view (a huge
// retention table) does not take the whole --timeout.
const checkTimeout = 10 * time.Second

func (d *doctor) run(ctx context.Context) doctorReport {
	checks := []struct {
		name string
		fn   func(context.Context) []finding
	}{
		{"writer", d.checkWriter},
		{"pooler", d.checkPooler},
		{"migrations", d.checkMigrations},
		{"hot-table", d.checkHotTable},
		{"oldest-transaction", d.checkOldestXact},
		{"prepared-transactions", d.checkPrepared},
		{"replication-slots", d.checkSlots},
		{"replication-lag", d.checkReplicas},
		{"retention", d.checkRetention},
	}
	var rep doctorReport
	for _, c := range checks {
		cctx, cancel := context.WithTimeout(ctx, checkTimeout)
		fs := c.fn(cctx)
		cancel()
		rep.Findings = append(rep.Findings, fs...)
	}
	for _, f := range rep.Findings {
		switch f.Severity {
		case sevCritical:
			rep.Critical++
		case sevWarn:
			rep.Warnings++
		}
	}
	return rep
}

// failed is the finding of a check whose query failed.
func (d *doctor) failed(check string, err error) []finding {
	return []finding{{
		Check: check, Severity: sevWarn,
		Summary: "could not check: " + d.redact(err.Error()),
		Action:  "run doctor as a role that may read the statistics views (grant pg_monitor), or check the error",
	}}
}

func (d *doctor) checkWriter(ctx context.Context) []finding {
	const check = "writer"
	var (
		inRecovery, txRO, defaultRO, aurora bool
		addr, version, db                   string
		port                                int
		started                             time.Time
	)
	err := d.conn.QueryRow(ctx, sqlDoctorServer).Scan(&inRecovery, &txRO, &defaultRO, &addr, &port, &started, &version, &db, &aurora)
	if err != nil {
		return d.failed(check, err)
	}
	instance := ""
	if aurora {
		_ = d.conn.QueryRow(ctx, sqlDoctorAurora).Scan(&instance)
	}
	server := fmt.Sprintf("%s:%d", addr, port)
	if addr == "" {
		server = fmt.Sprintf("unix socket, port %d", port)
	}
	if instance != "" {
		server = instance + " " + server
	}
	details := map[string]any{
		"server": server, "started": started.UTC().Format(time.RFC3339), "version": version, "database": db,
		"in_recovery": inRecovery, "transaction_read_only": txRO, "default_transaction_read_only": defaultRO,
	}
	d.standby = inRecovery
	switch {
	case inRecovery:
		return []finding{{Check: check, Severity: sevCritical, Details: details,
			Summary: fmt.Sprintf("the endpoint reaches a standby (replica in recovery) at %s (up since %s): writes fail with SQLSTATE 25006", server, started.UTC().Format(time.RFC3339)),
			Action:  "point the DSN at the cluster's writer endpoint; if a failover is under way, wait for the endpoint to move and run doctor again"}}
	case txRO || defaultRO:
		return []finding{{Check: check, Severity: sevCritical, Details: details,
			Summary: fmt.Sprintf("the endpoint reaches a read-only node at %s (default_transaction_read_only=%s): writes fail with SQLSTATE 25006", server, onOff(defaultRO)),
			Action:  "point the DSN at the writer; if this node was demoted on purpose (switchover), wait for the new writer; otherwise ALTER SYSTEM RESET default_transaction_read_only and SELECT pg_reload_conf()"}}
	}
	return []finding{{Check: check, Severity: sevOK, Details: details,
		Summary: fmt.Sprintf("writer %s, PostgreSQL %s, database %q, up since %s", server, version, db, started.UTC().Format(time.RFC3339))}}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// probeRounds is how many later transactions the pooler check reads its
// session setting and backend pid in.
const probeRounds = 3

func (d *doctor) checkPooler(ctx context.Context) []finding {
	const check = "pooler"
	var raw [8]byte
	_, _ = rand.Read(raw[:])
	token := hex.EncodeToString(raw[:])
	var pid0 int32
	var set string
	if err := d.conn.QueryRow(ctx, sqlDoctorSetProbe, token).Scan(&pid0, &set); err != nil {
		return []finding{{Check: check, Severity: sevWarn,
			Summary: "a session-level setting was refused (" + d.redact(err.Error()) + "): a pooler may sit in front",
			Action:  "give runners a direct or session-mode connection: LISTEN wake-ups need one"}}
	}
	pids := []int32{pid0}
	lost := false
	for range probeRounds {
		var pid int32
		var got string
		if err := d.conn.QueryRow(ctx, sqlDoctorReadProbe).Scan(&pid, &got); err != nil {
			return d.failed(check, err)
		}
		if !slices.Contains(pids, pid) {
			pids = append(pids, pid)
		}
		lost = lost || got != token
	}
	details := map[string]any{"backend_pids": pids, "session_setting_kept": !lost}
	if len(pids) > 1 || lost {
		return []finding{{Check: check, Severity: sevWarn, Details: details,
			Summary: fmt.Sprintf("a transaction-mode pooler sits in front: one client connection reached %d server sessions and the session setting was %s",
				len(pids), map[bool]string{true: "lost", false: "kept"}[lost]),
			Action: "connect runners directly or through a session-mode pool: LISTEN does not work through a transaction-mode pooler, so runners fall back to polling (PollInterval), and session state (advisory locks, SET) is not kept"}}
	}
	return []finding{{Check: check, Severity: sevOK, Details: details,
		Summary: "no transaction-mode pooler: the session kept its backend and its settings across transactions"}}
}

func (d *doctor) checkMigrations(ctx context.Context) []finding {
	const check = "migrations"
	m, err := migrations.New(d.conn, &migrations.Config{Schema: d.schema})
	if err != nil {
		return d.failed(check, err)
	}
	st, err := m.Status(ctx)
	if err != nil {
		return d.failed(check, err)
	}
	version, latest := 0, migrations.Latest()
	var unknown []int
	for _, s := range st {
		if s.Applied && s.Version > version {
			version = s.Version
		}
		if !s.Known {
			unknown = append(unknown, s.Version)
		}
	}
	details := map[string]any{"version": version, "latest": latest}
	switch {
	case version == 0:
		return []finding{{Check: check, Severity: sevCritical, Details: details,
			Summary: fmt.Sprintf("schema %q has no skiplock tables", d.schema),
			Action:  "run 'skiplock migrate up' (or check --schema)"}}
	case len(unknown) > 0:
		return []finding{{Check: check, Severity: sevWarn, Details: details,
			Summary: fmt.Sprintf("schema %q is at version %d, newer than this binary knows (%d)", d.schema, version, latest),
			Action:  "use a skiplock CLI as new as the services"}}
	case version < latest:
		return []finding{{Check: check, Severity: sevWarn, Details: details,
			Summary: fmt.Sprintf("schema %q is at version %d of %d", d.schema, version, latest),
			Action:  "run 'skiplock migrate up' before deploying services built with this version"}}
	}
	return []finding{{Check: check, Severity: sevOK, Details: details,
		Summary: fmt.Sprintf("schema %q is at version %d, the latest", d.schema, version)}}
}

func (d *doctor) checkHotTable(ctx context.Context) []finding {
	const check = "hot-table"
	table := pgx.Identifier{d.schema, "batch"}.Sanitize()
	var (
		live, dead, vacuums, autovacuums, size int64
		lastVacuum, lastAuto                   *time.Time
		relopts                                []string
		autovacuumOn                           bool
	)
	err := d.conn.QueryRow(ctx, sqlDoctorHotTable, table).Scan(&live, &dead, &lastVacuum, &lastAuto, &vacuums, &autovacuums, &relopts, &size, &autovacuumOn)
	if errors.Is(err, pgx.ErrNoRows) {
		return []finding{{Check: check, Severity: sevWarn, Summary: fmt.Sprintf("no table %s", table),
			Action: "run 'skiplock migrate up' (or check --schema)"}}
	}
	if err != nil {
		return d.failed(check, err)
	}
	last := "never"
	var lastAt *time.Time
	for _, t := range []*time.Time{lastVacuum, lastAuto} {
		if t != nil && (lastAt == nil || t.After(*lastAt)) {
			lastAt = t
		}
	}
	if lastAt != nil {
		last = ago(time.Since(*lastAt)) + " ago"
	}
	details := map[string]any{
		"n_live_tup": live, "n_dead_tup": dead, "last_vacuum": lastVacuum, "last_autovacuum": lastAuto,
		"vacuum_count": vacuums, "autovacuum_count": autovacuums, "reloptions": relopts, "total_bytes": size,
		"autovacuum": autovacuumOn,
	}
	var out []finding
	disabled := !autovacuumOn || slices.ContainsFunc(relopts, func(o string) bool {
		return strings.EqualFold(o, "autovacuum_enabled=false") || strings.EqualFold(o, "autovacuum_enabled=off")
	})
	if disabled {
		out = append(out, finding{Check: "autovacuum", Severity: sevWarn,
			Summary: fmt.Sprintf("autovacuum is off for %s (settings: %s)", table, strings.Join(relopts, ", ")),
			Action:  fmt.Sprintf("ALTER TABLE %s RESET (autovacuum_enabled) (and turn the server's autovacuum on): dead tuples of finished batches are then removed only by runners' own vacuums", table)})
	}
	summary := fmt.Sprintf("%s: %d live, %d dead tuples, %s; last vacuum %s (%d manual, %d auto)", table, live, dead, bytesText(size), last, vacuums, autovacuums)
	sev, action := sevOK, ""
	switch {
	case dead >= d.th.DeadTuplesCritical:
		sev = sevCritical
	case dead >= d.th.DeadTuplesWarn:
		sev = sevWarn
	}
	if sev != sevOK {
		action = fmt.Sprintf("VACUUM %s; if dead tuples stay, find what holds back the xmin horizon (oldest-transaction, prepared-transactions, replication-slots below) and end it", table)
	}
	out = append(out, finding{Check: check, Severity: sev, Summary: summary, Action: action, Details: details})
	return out
}

func (d *doctor) xactSeverity(age time.Duration) severity {
	switch {
	case age >= d.th.XactAgeCritical:
		return sevCritical
	case age >= d.th.XactAgeWarn:
		return sevWarn
	}
	return sevOK
}

func (d *doctor) checkOldestXact(ctx context.Context) []finding {
	const check = "oldest-transaction"
	var (
		pid                  int32
		user, app, state, db string
		ageSeconds           float64
		xidAge               int64
	)
	err := d.conn.QueryRow(ctx, sqlDoctorOldestXact).Scan(&pid, &user, &app, &state, &db, &ageSeconds, &xidAge)
	if errors.Is(err, pgx.ErrNoRows) {
		return []finding{{Check: check, Severity: sevOK, Summary: "no other transaction holds back the xmin horizon"}}
	}
	if err != nil {
		return d.failed(check, err)
	}
	age := time.Duration(ageSeconds * float64(time.Second))
	details := map[string]any{"pid": pid, "user": user, "application_name": app, "state": state, "database": db,
		"age_seconds": ageSeconds, "xid_age": xidAge}
	sev := d.xactSeverity(age)
	f := finding{Check: check, Severity: sev, Details: details,
		Summary: fmt.Sprintf("pid %d (user %q, application %q, %s, database %q) has held back the xmin horizon for %s (%d transactions)",
			pid, user, app, state, db, ago(age), xidAge)}
	if sev != sevOK {
		f.Action = fmt.Sprintf("while it lives no dead tuple can be removed: end it if you can (SELECT pg_terminate_backend(%d)), and bound such sessions with idle_in_transaction_session_timeout", pid)
	}
	return []finding{f}
}

func (d *doctor) checkPrepared(ctx context.Context) []finding {
	const check = "prepared-transactions"
	var n int64
	var ageSeconds float64
	var gid string
	if err := d.conn.QueryRow(ctx, sqlDoctorPrepared).Scan(&n, &ageSeconds, &gid); err != nil {
		return d.failed(check, err)
	}
	if n == 0 {
		return []finding{{Check: check, Severity: sevOK, Summary: "no prepared transactions"}}
	}
	age := time.Duration(ageSeconds * float64(time.Second))
	sev := d.xactSeverity(age)
	f := finding{Check: check, Severity: sev, Details: map[string]any{"count": n, "oldest_gid": gid, "oldest_age_seconds": ageSeconds},
		Summary: fmt.Sprintf("%d prepared transactions; the oldest, %q, prepared %s ago, holds back the xmin horizon", n, gid, ago(age))}
	if sev != sevOK {
		f.Action = "COMMIT PREPARED or ROLLBACK PREPARED it (its transaction manager may be gone)"
	}
	return []finding{f}
}

func (d *doctor) checkSlots(ctx context.Context) []finding {
	const check = "replication-slots"
	rows, err := d.conn.Query(ctx, sqlDoctorSlots)
	if err != nil {
		return d.failed(check, err)
	}
	var out []finding
	var name, kind string
	var active bool
	var xminAge, catalogAge int64
	_, err = pgx.ForEachRow(rows, []any{&name, &kind, &active, &xminAge, &catalogAge}, func() error {
		held := max(xminAge, catalogAge)
		sev := sevOK
		switch {
		case held >= d.th.SlotXminAgeCritical:
			sev = sevCritical
		case held >= d.th.SlotXminAgeWarn, !active && held > 0:
			sev = sevWarn
		}
		f := finding{Check: check, Severity: sev,
			Details: map[string]any{"slot": name, "type": kind, "active": active, "xmin_age": xminAge, "catalog_xmin_age": catalogAge},
			Summary: fmt.Sprintf("slot %q (%s, %s) holds back the xmin horizon by %d transactions", name, kind, map[bool]string{true: "active", false: "inactive"}[active], held)}
		if sev != sevOK {
			f.Action = fmt.Sprintf("if its consumer is gone, SELECT pg_drop_replication_slot('%s'); otherwise let it catch up", strings.ReplaceAll(name, "'", "''"))
		}
		out = append(out, f)
		return nil
	})
	if err != nil {
		return d.failed(check, err)
	}
	if len(out) == 0 {
		return []finding{{Check: check, Severity: sevOK, Summary: "no replication slots"}}
	}
	return out
}

func (d *doctor) checkReplicas(ctx context.Context) []finding {
	const check = "replication-lag"
	if d.standby {
		return []finding{{Check: check, Severity: sevOK, Summary: "skipped: the endpoint reaches a standby"}}
	}
	rows, err := d.conn.Query(ctx, sqlDoctorReplicas)
	if err != nil {
		return d.failed(check, err)
	}
	var out []finding
	var app, addr, state, sync string
	var lagSeconds float64
	var lagBytes, xminAge int64
	_, err = pgx.ForEachRow(rows, []any{&app, &addr, &state, &sync, &lagSeconds, &lagBytes, &xminAge}, func() error {
		lag := time.Duration(lagSeconds * float64(time.Second))
		sev := sevOK
		switch {
		case lag >= d.th.LagCritical:
			sev = sevCritical
		case lag >= d.th.LagWarn || state != "streaming":
			sev = sevWarn
		}
		f := finding{Check: check, Severity: sev,
			Details: map[string]any{"application_name": app, "client_addr": addr, "state": state, "sync_state": sync,
				"replay_lag_seconds": lagSeconds, "replay_lag_bytes": lagBytes, "xmin_age": xminAge},
			Summary: fmt.Sprintf("replica %q at %s (%s, %s): replay lag %s, %s behind", app, addr, state, sync, ago(lag), bytesText(lagBytes))}
		if xminAge > 0 {
			f.Summary += fmt.Sprintf("; with hot_standby_feedback it holds back the xmin horizon by %d transactions", xminAge)
		}
		if sev != sevOK {
			f.Action = "a failover to this replica would lose or wait for that much: check its disk, network and long queries (hot_standby_feedback, max_standby_streaming_delay)"
		}
		out = append(out, f)
		return nil
	})
	if err != nil {
		return d.failed(check, err)
	}
	if len(out) == 0 {
		return []finding{{Check: check, Severity: sevOK, Summary: "no streaming replicas attached to this server"}}
	}
	return out
}

func (d *doctor) checkRetention(ctx context.Context) []finding {
	const check = "retention"
	quoted := pgx.Identifier{d.schema}.Sanitize()
	sub := func(q string) string { return strings.ReplaceAll(q, "{s}", quoted) }
	tables := []struct {
		name, overdue, config string
		retention             time.Duration
	}{
		{"batch_key_digest", sqlDoctorOverdueKeys, "KeyRetention", d.th.KeyRetention},
		{"batch_key", sqlDoctorOverdueOldKeys, "KeyRetention", d.th.KeyRetention},
		{"batch_done", sqlDoctorOverdueDone, "DoneRetention", d.th.DoneRetention},
	}
	var out []finding
	for _, t := range tables {
		name := pgx.Identifier{d.schema, t.name}.Sanitize()
		var size, rows int64
		err := d.conn.QueryRow(ctx, sqlDoctorTableSize, name).Scan(&size, &rows)
		if errors.Is(err, pgx.ErrNoRows) {
			continue // not installed (an older or newer schema version); migrations says so
		}
		if err != nil {
			out = append(out, d.failed(check, err)...)
			continue
		}
		var overdue *float64
		if err := d.conn.QueryRow(ctx, sub(t.overdue), (t.retention + d.th.PruneGrace).Microseconds()).Scan(&overdue); err != nil {
			out = append(out, d.failed(check, err)...)
			continue
		}
		details := map[string]any{"table": t.name, "total_bytes": size, "estimated_rows": rows,
			"retention_seconds": t.retention.Seconds()}
		f := finding{Check: check + ":" + t.name, Severity: sevOK, Details: details,
			Summary: fmt.Sprintf("%s: %s, about %d rows; none older than %s %s (+%s grace)", name, bytesText(size), rows, t.config, ago(t.retention), ago(d.th.PruneGrace))}
		if overdue != nil {
			age := time.Duration(*overdue * float64(time.Second))
			details["oldest_overdue_age_seconds"] = *overdue
			f.Severity = sevWarn
			f.Summary = fmt.Sprintf("%s: %s, about %d rows; the oldest row is %s old, past %s %s: pruning is behind", name, bytesText(size), rows, ago(age), t.config, ago(t.retention))
			f.Action = fmt.Sprintf("check that runners are running with pruning on (queue Prune, PruneInterval), or call Client.Prune; if the services' %s is longer, pass --%s", t.config, strings.ToLower(strings.TrimSuffix(t.config, "Retention"))+"-retention")
		}
		out = append(out, f)
	}
	return out
}

// bytesText formats a size for people.
func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
