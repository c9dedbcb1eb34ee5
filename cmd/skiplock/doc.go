// Command skiplock is the operator's tool for skiplock queues: schema
// migrations, queue statistics, inspection of batches, dead letters, pause
// and resume, releasing the leases of a worker that is gone, and a doctor
// that checks the database behind an endpoint.
//
//	go install github.com/skiplock/skiplock/cmd/skiplock@latest
//
//	skiplock migrate up|down --to N|status|validate
//	skiplock stats [QUEUE]
//	skiplock list --queue Q --state available|scheduled|running|dead [--limit N] [--after ID]
//	skiplock show ID
//	skiplock dead list|requeue ID...|requeue-all|delete ID... --queue Q
//	skiplock pause QUEUE
//	skiplock resume QUEUE
//	skiplock release-leases --queue Q --owner O
//	skiplock doctor [thresholds]
//
// The database is given by --dsn or, without it, by $DATABASE_URL; --schema
// names the schema of skiplock's tables (default "skiplock"), --timeout
// bounds a whole command (default 30s), and --json makes every command print
// JSON instead of an aligned table. Passwords are never printed: error
// messages are scrubbed of the connection string and its password.
//
// Exit codes: 0 done; 1 the operation failed; 2 a bad invocation (unknown
// command or flag, missing DSN, invalid argument such as a hostile queue
// name), which changes nothing; 3 a batch named was not found (show; dead
// requeue and delete, which then change nothing); 4 a check failed
// (migrate validate with a pending or unknown version, doctor with a
// critical finding).
package main
