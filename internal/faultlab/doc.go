// Package faultlab is the one home of skiplock's fault workload, shared by the failover
// scenario tests and the bench: a real primary and streaming replica behind a proxy standing
// in for the cluster endpoint (Cluster), a load of producers and runners that records every
// acknowledged enqueue and every handler execution (Load), the fault kinds as functions on
// both (Kind, Run), a worker process that is SIGKILLed mid-batch (CrashWorkerMain), one
// invariant checker run against the final writer (Load.Check), and a randomized fault
// schedule that is a pure function of a seed and a duration (NewSchedule, Chaos).
//
// Nothing here is a mock: the servers are real PostgreSQL (internal/pgtest), faults are
// injected by wrapping real things (the proxy, pg_terminate_backend, a killed process, a cut
// replication stream).
package faultlab
