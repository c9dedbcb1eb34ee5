package harness

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/skiplock/skiplock/internal/faultlab"
)

// Scenario names, in the order they run.
const (
	ScenarioEnqueue    = "enqueue"
	ScenarioThroughput = "throughput"
	ScenarioCeiling    = "ceiling"
	ScenarioPeer       = "peer"
	ScenarioLatency    = "latency"
	ScenarioSoak       = "soak"
	ScenarioFailover   = "failover"
	ScenarioChaos      = "chaos"
	ScenarioCost       = "cost"
	ScenarioRetention  = "retention"
	ScenarioSlots      = "slots"
	ScenarioMVCC       = "mvcc"
)

// ScenarioBacklog runs only when named: it enqueues BacklogRows batches per
// system before draining them.
const ScenarioBacklog = "backlog"

// AllScenarios lists the scenarios "all" runs (cost among them: about 12 s
// in the quick preset). The others run only when named, as they take long or
// fill large tables: chaos (ChaosDuration), backlog (BacklogRows), retention
// (RetentionRows key rows), slots (minutes of worker processes) and mvcc
// (MVCCDuration six times).
var AllScenarios = []string{ScenarioEnqueue, ScenarioThroughput, ScenarioCeiling, ScenarioPeer, ScenarioLatency, ScenarioSoak, ScenarioFailover, ScenarioCost}

// knownScenarios are the names ParseScenarios accepts.
var knownScenarios = append(slices.Clone(AllScenarios), ScenarioChaos, ScenarioBacklog, ScenarioRetention, ScenarioSlots, ScenarioMVCC)

// Config is one run of the harness. Presets fill it; flags override fields.
type Config struct {
	Preset    string
	Scenarios []string
	// DSN targets an existing server for every scenario but failover (which
	// always starts its own primary and replica). Empty starts a throwaway
	// server with fsync on.
	DSN string

	Reps       int   // repetitions of each measurement; medians are reported
	ClaimSizes []int // throughput: claim sizes
	Workers    []int // throughput: worker counts (runners / River clients)
	// DrainRows is the prefill of one throughput drain per claim size.
	DrainRows map[int]int
	// DrainCap ends a drain that has not emptied the queue; the rate is then
	// what was completed within it.
	DrainCap time.Duration
	// PgbenchClients is the ceiling's client count.
	PgbenchClients int

	EnqueueRows      int           // bulk enqueue: rows per measurement
	EnqueueProducers []int         // bulk enqueue: producer counts
	SingleWindow     time.Duration // single enqueue: measuring window
	SingleProducers  int

	LatencyWindow time.Duration // per configuration
	LatencyRate   float64       // enqueues per second
	PollInterval  time.Duration // the polling-only configurations' interval

	SoakDuration time.Duration
	SoakWindow   time.Duration

	FailoverRepeat  int           // K: runs of each fault kind
	StaleWindow     time.Duration // stale endpoint: how long it points at the demoted node
	BlackholeWindow time.Duration
	WorkerCrash     bool // include the worker-crash fault (re-executes this binary)

	ChaosDuration time.Duration   // chaos: length of the randomized fault schedule
	ChaosSeed     int64           // chaos: the schedule's seed (printed; the same seed replays it)
	ChaosKinds    []faultlab.Kind // chaos: the fault kinds drawn from (nil: every kind)

	BacklogRows  int   // backlog: keyed batches enqueued before the drain
	BacklogMarks []int // backlog: depths at which the drain rate is reported (those <= BacklogRows)

	CostBatches int // cost: batches (River: jobs) per measured lifecycle of each variant

	RetentionRows     int           // retention: key rows at the target size (7 days of 500 batches/s: 302,400,000)
	RetentionBaseRows int           // retention: key rows at the size it is compared with
	RetentionWindow   time.Duration // retention: keyed enqueue measuring window

	Slots     []int         // slots: handler slots per worker process
	Processes []int         // slots: worker processes
	SlotsRows int           // slots: the most batches prefilled for one drain
	SlotsCap  time.Duration // slots: ends a drain that has not emptied the queue

	MVCCDuration time.Duration // mvcc: length of each run (each system under each variant)
	MVCCWindow   time.Duration // mvcc: the reporting window
	MVCCVariants []string      // mvcc: which of AllMVCCVariants run
	MVCCSystems  []string      // mvcc: which systems run (skiplock, river); default both

	// Diag loads pg_stat_statements and auto_explain on the throwaway
	// server, and the mvcc scenario prints after each window where the
	// server's time went (see diag.go). DiagLog, if set, receives a copy
	// of the server log (with the plans of slow statements) at the end.
	Diag    bool
	DiagLog string

	Progress io.Writer // progress lines; nil discards them
}

// Preset returns the configuration of a named preset: "quick" (a few
// minutes on a 2-core machine) or "full".
func Preset(name string) (*Config, error) {
	c := &Config{
		Preset:           name,
		Scenarios:        slices.Clone(AllScenarios),
		ClaimSizes:       []int{1, 10, 100},
		PgbenchClients:   8,
		EnqueueProducers: []int{1, 4},
		SingleProducers:  4,
		LatencyRate:      20,
		PollInterval:     100 * time.Millisecond,
		SoakWindow:       5 * time.Second,
		WorkerCrash:      true,
		ChaosDuration:    5 * time.Minute,
		ChaosSeed:        1,
		BacklogMarks:     slices.Clone(BacklogMarksDefault),
		Slots:            []int{1, 16, 64, 256},
		MVCCVariants:     slices.Clone(AllMVCCVariants),
		MVCCSystems:      []string{SystemSkiplock, SystemRiver},
	}
	switch name {
	case "quick":
		c.Reps = 3
		c.Workers = []int{1, 4, 16}
		c.DrainRows = map[int]int{1: 5000, 10: 20000, 100: 50000}
		c.DrainCap = time.Second
		c.EnqueueRows = 50000
		c.SingleWindow = time.Second
		c.LatencyWindow = 8 * time.Second
		c.SoakDuration = 20 * time.Second
		c.FailoverRepeat = 1
		c.StaleWindow = 2 * time.Second
		c.BlackholeWindow = 3 * time.Second
		c.BacklogRows = 1_000_000
		c.CostBatches = 20000
		c.RetentionRows, c.RetentionBaseRows, c.RetentionWindow = 10_000_000, 1_000_000, 5*time.Second
		c.Processes = []int{1, 4}
		c.SlotsRows = 60000
		c.SlotsCap = 5 * time.Second
		c.MVCCDuration, c.MVCCWindow = 3*time.Minute, 30*time.Second
	case "full":
		c.Reps = 5
		c.Workers = []int{1, 2, 4, 8, 16}
		c.DrainRows = map[int]int{1: 10000, 10: 40000, 100: 100000}
		c.DrainCap = 10 * time.Second
		c.EnqueueRows = 100000
		c.SingleWindow = 5 * time.Second
		c.LatencyWindow = 30 * time.Second
		c.SoakDuration = 5 * time.Minute
		c.FailoverRepeat = 3
		c.StaleWindow = 5 * time.Second
		c.BlackholeWindow = 10 * time.Second
		c.BacklogRows = 10_000_000
		c.CostBatches = 100000
		c.RetentionRows, c.RetentionBaseRows, c.RetentionWindow = 7*24*3600*500, 1_000_000, 20*time.Second
		c.Processes = []int{1, 4, 16}
		c.SlotsRows = 150000
		c.SlotsCap = 15 * time.Second
		c.MVCCDuration, c.MVCCWindow = 30*time.Minute, time.Minute
	default:
		return nil, fmt.Errorf("unknown preset %q (quick or full)", name)
	}
	return c, nil
}

// ParseScenarios parses a comma-separated list ("all" for every scenario).
func ParseScenarios(s string) ([]string, error) {
	if s == "" || s == "all" {
		return slices.Clone(AllScenarios), nil
	}
	var out []string
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		if !slices.Contains(knownScenarios, name) {
			return nil, fmt.Errorf("unknown scenario %q (known: %s)", name, strings.Join(knownScenarios, ", "))
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out, nil
}

// validate checks the fields a run depends on.
func (c *Config) validate() error {
	switch {
	case c.Reps < 1:
		return fmt.Errorf("Reps must be at least 1")
	case len(c.ClaimSizes) == 0 || len(c.Workers) == 0:
		return fmt.Errorf("ClaimSizes and Workers must not be empty")
	case c.DrainCap <= 0 || c.LatencyWindow <= 0 || c.SoakDuration <= 0 || c.SoakWindow <= 0:
		return fmt.Errorf("durations must be positive")
	case c.has(ScenarioChaos) && c.ChaosDuration < 30*time.Second:
		return fmt.Errorf("ChaosDuration must be at least 30s")
	case c.LatencyRate <= 0:
		return fmt.Errorf("LatencyRate must be positive")
	case c.has(ScenarioBacklog) && c.BacklogRows < 1000:
		return fmt.Errorf("BacklogRows must be at least 1,000")
	case c.has(ScenarioCost) && c.CostBatches < 4*costPerCall:
		return fmt.Errorf("CostBatches must be at least %d", 4*costPerCall)
	case c.has(ScenarioRetention) && (c.RetentionBaseRows < 7 || c.RetentionRows < c.RetentionBaseRows || c.RetentionWindow < time.Second):
		return fmt.Errorf("RetentionBaseRows must be at least 7, RetentionRows at least RetentionBaseRows, RetentionWindow at least 1s")
	case c.has(ScenarioSlots) && (len(c.Slots) == 0 || len(c.Processes) == 0 || c.SlotsRows < 1 || c.SlotsCap <= 0):
		return fmt.Errorf("slots: Slots and Processes must not be empty, SlotsRows and SlotsCap must be positive")
	}
	if err := c.validateMVCC(); err != nil {
		return err
	}
	for _, s := range c.ClaimSizes {
		if c.DrainRows[s] < s {
			return fmt.Errorf("DrainRows[%d] must be at least the claim size", s)
		}
	}
	return nil
}

func (c *Config) has(name string) bool { return slices.Contains(c.Scenarios, name) }

// ParseInts parses a comma-separated list of positive integers.
func ParseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("invalid count %q in %q", f, s)
		}
		out = append(out, n)
	}
	return out, nil
}
