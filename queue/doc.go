// Package queue is a durable PostgreSQL queue of batch metadata.
//
// Each row describes a batch of events stored elsewhere — an object-store
// key, a Kafka offset range — as a batch.Meta. Producers enqueue batches
// (one at a time, in bulk, or inside their own pgx.Tx); workers claim them
// with SELECT ... FOR UPDATE SKIP LOCKED, many per round trip, under a lease
// whose expiry comes from the database clock.
//
// # Leases and fencing
//
// A claim gives each batch a fresh random lease token. Complete, Fail,
// Extend and Release are single statements keyed by (id, token): they
// succeed only while the token still holds the batch and otherwise return
// ErrLeaseLost. A batch whose lease expires (a crashed or cut-off worker)
// is made claimable again by ReclaimExpired, which every Runner runs
// periodically. Completed batches leave the hot table; a short-lived
// completion record makes a repeated Complete with the same token succeed,
// so completions are safe to retry when a commit's outcome is unknown.
//
// # Runner
//
// A Runner embeds workers in a binary: it claims batches of a queue, runs a
// HandlerFunc on each with bounded concurrency (RunnerConfig.Concurrency
// handler slots; each claim asks for as many batches as slots are free, at
// most RunnerConfig.ClaimSize), renews all held leases in
// one statement per heartbeat, and acknowledges outcomes together with the
// next claim in one pipelined round trip. If a lease cannot be renewed, the
// handler's context is cancelled FenceMargin before the lease would expire
// (self-fencing), so two handlers of one batch never overlap unless a
// handler ignores its context. New batches wake runners at once through
// LISTEN/NOTIFY; polling is the fallback.
//
// # Old snapshots
//
// A claim reads the claim index from its head, and every batch claimed or
// completed leaves an entry there that vacuum may remove only once no
// snapshot can still see the row. While one old snapshot lives — a pg_dump,
// a long analytics query, an idle-in-transaction session, a replica with
// hot_standby_feedback — those entries pile up, and a claim that starts at
// the head visits them all, and after half an hour of churn it no longer
// fits in a round trip's timeout at all. A Runner therefore starts its
// claims at a floor at the last batch its last claim took, but no later
// than that claim's clock less the floor's lag (and scans the more urgent
// priorities apart), so a claim costs about the batches it takes plus
// those other claimers took meanwhile (and, once the claims have caught up
// with the producers, those finished within the lag), however old the
// oldest snapshot is. It reads from the head only at start; if that
// claim times out, the floor starts at the database's clock. Below the
// floor, a sweep finds batches that became claimable there: released and
// reclaimed batches (they keep their place in line), batches enqueued with
// a RunAt in the past, and enqueues whose transaction took longer than the
// floor's lag (a quarter of a second at first, adapting between 50 ms and
// 5 s). A pass of the sweep reads slices of run_at, from the floor down to
// the bottom of the index, each riding along with a claim from the floor.
// A slice's width adapts to the index entries it read, dead ones included,
// as the server counts them (not to its round trip's time, which on a
// loaded machine varies more than a slice costs), so that it reads about
// 10 ms worth; slices are spaced so the sweep takes about 5 % of the
// server's time. Without an old snapshot a pass takes a few claims, every
// second. The runners of one Client that serve the same queue share the
// sweep and the floor's lag. A batch below the floor waits at most two
// passes: about a second normally, minutes under a snapshot that kept
// millions of dead entries. Reclaims of expired leases look back only to
// the previous reclaim, and sweep the lease index below that the same way;
// the release of claims whose answer was lost reads only the leases taken
// since. A runner vacuums the hot table in a loop of its own, less often
// while its vacuums cannot remove what they find or run out of time.
// Client.Claim always reads from the head.
//
// Statements that act on given batches find them by primary key with a
// condition the index answers (id = ANY(...)), not by a join alone: after a
// backlog drained under an old snapshot, statistics say the table is all
// but empty while its indexes hold millions of dead entries, and a join
// then tempts the planner into reading a whole index per acknowledgement.
// After a round trip fails, a runner sends the outcomes it holds alone
// before it claims again, so that whatever failed (a slice that ran out of
// time, say) cannot hold acknowledgements back until their leases expire.
//
// # Hooks
//
// Metrics, tracing and logging plug in at two seams; the skiplockprom
// package uses both.
//
// RunnerConfig.Middleware wraps the handler (MiddlewareFunc: the first
// element is outermost). A middleware sees each batch, the handler's
// context, its error and how long it took, and what it returns is the
// outcome. It runs where the handler runs, inside the runner's protection:
// a middleware that panics, calls runtime.Goexit or never returns fails or
// abandons the attempt exactly as such a handler would.
//
// Config.OnEvent receives typed lifecycle events (Event, EventKind):
// enqueued, claimed, completed, retried, dead-lettered, lease extended,
// lease lost, released, reclaimed, and the re-assertions of enqueues and
// completions after a failover. Events are batched: one event per kind per
// round trip, with Count and the batches concerned (a claim of 100 is one
// EventClaimed with Count 100), so a hook's cost does not grow with the
// claim size. The callback is treated as untrusted: events go through a
// bounded buffer (Config.EventBuffer) to one goroutine of the client's that
// calls it and survives its panics and runtime.Goexit; when the buffer is
// full, events are dropped and counted (Client.EventStats); a blocked or
// slow callback never slows a claim loop or a Stop, and Close waits for it
// at most 250ms. With no OnEvent no event is built and no goroutine runs.
// The failover package's pool has its own events (failover.Config.OnEvent).
//
// # Guarantees
//
// Delivery is at least once: a batch reaches a handler until it is
// completed, or dead-lettered after its last attempt (see ListDead and
// RequeueDead). Enqueues with an idempotency key (by default derived from
// the batch's source position) add nothing when repeated. Leases, schedules
// and retries use the database's clock only.
//
// The tables are installed by the migrations package. A Client runs on a
// *pgxpool.Pool or on the failover package's writer-verified pool.
package queue
