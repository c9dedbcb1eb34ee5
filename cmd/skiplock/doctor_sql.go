package main

// The SQL of doctor. "{s}" stands for the schema, quoted with
// pgx.Identifier.Sanitize (the only substitution); everything else is a
// positional parameter. Durations travel as microseconds.
const (
	// Who answers: role, read-only settings and identity (as the failover
	// package records it), and whether Aurora's instance identifier exists.
	sqlDoctorServer = `SELECT pg_is_in_recovery(),
    current_setting('transaction_read_only') = 'on',
    current_setting('default_transaction_read_only') = 'on',
    coalesce(host(inet_server_addr()), ''), coalesce(inet_server_port(), 0),
    pg_postmaster_start_time(), current_setting('server_version'), current_database(),
    to_regproc('aurora_db_instance_identifier') IS NOT NULL`

	sqlDoctorAurora = `SELECT aurora_db_instance_identifier()`

	// Pooler probe: a session-level setting ($1 is a random value) and the
	// backend's pid; read back in later transactions, a transaction-mode
	// pooler loses the one or changes the other.
	sqlDoctorSetProbe  = `SELECT pg_backend_pid(), set_config('skiplock.doctor_probe', $1, false)`
	sqlDoctorReadProbe = `SELECT pg_backend_pid(), coalesce(current_setting('skiplock.doctor_probe', true), '')`

	// The hot table ($1: its quoted name) and its vacuum statistics and
	// settings; no row when it does not exist.
	sqlDoctorHotTable = `SELECT coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0),
    s.last_vacuum, s.last_autovacuum, coalesce(s.vacuum_count, 0), coalesce(s.autovacuum_count, 0),
    coalesce(c.reloptions, '{}'), pg_total_relation_size(c.oid), current_setting('autovacuum') = 'on'
FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = to_regclass($1)`

	// The oldest transaction that holds back the xmin horizon (a snapshot
	// or a transaction id), other than this session's and autovacuum's
	// (whose are short and end by themselves).
	sqlDoctorOldestXact = `SELECT pid, coalesce(usename, ''), coalesce(application_name, ''), coalesce(state, ''),
    coalesce(datname, ''), extract(epoch FROM now() - xact_start)::float8,
    coalesce(greatest(age(backend_xmin), age(backend_xid)), 0)::int8
FROM pg_stat_activity
WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND backend_type <> 'autovacuum worker'
    AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)
ORDER BY xact_start
LIMIT 1`

	// Prepared transactions: how many, the oldest's age and name.
	sqlDoctorPrepared = `SELECT count(*), coalesce(extract(epoch FROM now() - min(prepared))::float8, 0),
    coalesce((SELECT gid FROM pg_prepared_xacts ORDER BY prepared LIMIT 1), '')
FROM pg_prepared_xacts`

	// Replication slots and how many transactions their xmin and
	// catalog_xmin hold back, oldest first.
	sqlDoctorSlots = `SELECT slot_name, slot_type, active, coalesce(age(xmin), 0)::int8, coalesce(age(catalog_xmin), 0)::int8
FROM pg_replication_slots
ORDER BY greatest(coalesce(age(xmin), 0), coalesce(age(catalog_xmin), 0)) DESC, slot_name`

	// Streaming replicas of this server: lag in time and bytes, and the xmin
	// they hold back (hot_standby_feedback).
	sqlDoctorReplicas = `SELECT coalesce(application_name, ''), coalesce(host(client_addr), ''), coalesce(state, ''),
    coalesce(sync_state, ''), coalesce(extract(epoch FROM replay_lag)::float8, 0),
    coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::int8, coalesce(age(backend_xmin), 0)::int8
FROM pg_stat_replication
ORDER BY 1, 2`

	// Size and estimated rows of a table ($1: its quoted name); no row when
	// it does not exist.
	sqlDoctorTableSize = `SELECT pg_total_relation_size(c.oid), greatest(c.reltuples, 0)::int8
FROM pg_class c WHERE c.oid = to_regclass($1)`

	// Age in seconds of the oldest row older than $1 µs (NULL if none), per
	// retention table: a block-range index on the time column narrows the
	// scan to the page ranges that can hold such rows.
	sqlDoctorOverdueKeys = `SELECT extract(epoch FROM now() - min(created_at))::float8 FROM {s}.batch_key_digest
WHERE created_at < now() - $1::float8 * interval '1 microsecond'`
	sqlDoctorOverdueOldKeys = `SELECT extract(epoch FROM now() - min(created_at))::float8 FROM {s}.batch_key
WHERE created_at < now() - $1::float8 * interval '1 microsecond'`
	sqlDoctorOverdueDone = `SELECT extract(epoch FROM now() - min(done_at))::float8 FROM {s}.batch_done
WHERE done_at < now() - $1::float8 * interval '1 microsecond'`
)
