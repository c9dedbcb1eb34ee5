package harness

import "github.com/skiplock/skiplock/internal/faultlab"

// The worker-crash fault (faultlab.CrashWorker) re-executes this binary as
// a worker process, which claims batches, reports each on stdout and never
// finishes them, until it is killed.

// IsCrashWorker reports whether this process was started as the
// worker-crash fault's worker; main then calls CrashWorkerMain.
func IsCrashWorker() bool { return faultlab.IsCrashWorker() }

// CrashWorkerMain is the crash fault's worker process. It returns only on
// a setup error (the exit code); otherwise it runs until killed.
func CrashWorkerMain() int { return faultlab.CrashWorkerMain() }
