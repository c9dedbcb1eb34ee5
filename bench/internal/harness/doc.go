// Package harness is skiplock's benchmark and fault harness, run by the
// skiplock-bench command: skiplock side by side with River (pinned in this
// module only) and with pgbench running the queue's own claim+complete SQL
// on the same server in the same run, and skiplock's failover faults under
// load with the invariant check.
//
// Scenarios (see Config and bench/README.md):
//
//   - enqueue: bulk (5,000 rows per call) and single enqueue, rows/s;
//   - throughput: claim+complete with a no-op handler, batches/s per claim
//     size and worker count (ceiling adds pgbench, peer adds River);
//   - latency: enqueue call → handler start on an idle system, with
//     NOTIFY and polling only;
//   - soak: producers and runners at full speed for a fixed time,
//     throughput per window and the hot table's size and dead tuples;
//   - failover: every fault kind on a fresh primary and replica behind a
//     proxy, recovery times, lost, duplicates and stale completions
//     (internal/faultlab's cluster, load, faults and invariant check);
//   - chaos (only when named): faultlab's randomized fault schedule of
//     -seed over -duration, faults survived by kind, lost, stale
//     completions, duplicates per fault, recovery p50/p99/max.
//
// Every measurement starts from the same state (both systems' tables
// truncated, the measured one prefilled, VACUUM ANALYZE); systems are
// interleaved and their order alternates between repetitions; medians of
// the repetitions are reported and ratios are computed within the run.
package harness
