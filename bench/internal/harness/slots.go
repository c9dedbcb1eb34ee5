package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// The slots scenario compares the systems at equal handler slots: every
// worker process runs one skiplock Runner with Concurrency = slots (and the
// default ClaimSize, which is Concurrency), or one River client with
// MaxWorkers = slots, and drains a prefilled queue with a no-op handler.
// Worker processes are real OS processes: this binary re-executed with
// slotsChildEnv set, so processes share nothing but the database, as
// separately deployed workers do.
//
// Parent and child speak in lines. The child connects, builds its system
// and writes READY; once every child is ready the parent writes GO to all
// and starts the clock. A child then starts working and writes "P <n>"
// (completions acknowledged so far) at most every slotsReportEvery while n
// changes. When the counts add up to the prefill (or the cap passes), the
// parent writes STOP; the child stops gracefully and writes
// "DONE <completed> <handled> <unix-nanos of its last completion seen>".
// The drain's time runs from GO to the last completion of any child.

// slotsChildEnv marks a slots worker process; its value is the child's
// slotsSpec as JSON.
const slotsChildEnv = "SKIPLOCK_BENCH_SLOTS_CHILD"

const (
	slotsChildConns  = 10 // pool size of one worker process (16 processes stay under the throwaway server's 200 connections)
	slotsSampleEvery = 5 * time.Millisecond
	slotsReportEvery = 20 * time.Millisecond
	slotsMinRows     = 3000
	slotsPoll        = 20 * time.Millisecond // skiplock's PollInterval, River's FetchPollInterval
)

// slotsSpec is what a worker process runs.
type slotsSpec struct {
	System string `json:"system"`
	Tuning string `json:"tuning,omitempty"` // River's fetch tuning (riverSlotsTunings)
	URL    string `json:"url"`
	Slots  int    `json:"slots"`
	Rows   int    `json:"rows"` // the prefill (sizes River's event buffer)
}

// riverSlotsTunings are River's fetch settings tried at every slot count;
// River's figure is the best of them. River fetches up to its free slots
// whenever a slot frees, at most once per FetchCooldown: riverbench's 2 ms,
// and River's minimum, 1 ms (more, smaller fetches). FetchPollInterval only
// matters when a fetch comes back short.
var riverSlotsTunings = []riverTuning{
	riverFast,
	{name: "cooldown 1ms", cooldown: river.FetchCooldownMin, poll: slotsPoll},
}

// IsSlotsChild reports whether this process was started as a worker
// process of the slots scenario; main then calls SlotsChildMain.
func IsSlotsChild() bool { return os.Getenv(slotsChildEnv) != "" }

// SlotsChildMain is a worker process of the slots scenario (see above). It
// returns the exit code.
func SlotsChildMain() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "skiplock-bench slots worker:", err)
		return 2
	}
	var spec slotsSpec
	if err := json.Unmarshal([]byte(os.Getenv(slotsChildEnv)), &spec); err != nil {
		return fail(fmt.Errorf("%s: %w", slotsChildEnv, err))
	}
	ctx := context.Background()
	pcfg, err := pgxpool.ParseConfig(spec.URL)
	if err != nil {
		return fail(errors.New("parse the connection string: invalid (not shown)"))
	}
	pcfg.MaxConns = slotsChildConns
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil { // one warm connection before the clock starts
		return fail(err)
	}
	var w slotsWorker
	switch spec.System {
	case SystemSkiplock:
		w, err = newSkiplockSlotsWorker(pool, spec)
	case SystemRiver:
		w, err = newRiverSlotsWorker(pool, spec)
	default:
		err = fmt.Errorf("unknown system %q", spec.System)
	}
	if err != nil {
		return fail(err)
	}

	fmt.Println("READY")
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || strings.TrimSpace(in.Text()) != "GO" {
		return fail(errors.New("the parent went away before GO"))
	}
	if err := w.start(ctx); err != nil {
		return fail(err)
	}
	stop := make(chan struct{})
	go func() {
		for in.Scan() && strings.TrimSpace(in.Text()) != "STOP" {
		}
		close(stop) // STOP, or the parent went away
	}()
	tick := time.NewTicker(slotsSampleEvery)
	var (
		seen, printed int64 = 0, 0
		last, printAt time.Time
	)
sample:
	for {
		select {
		case <-stop:
			break sample
		case now := <-tick.C:
			if n := w.completed(); n != seen {
				seen, last = n, now
			}
			if seen != printed && now.Sub(printAt) >= slotsReportEvery {
				fmt.Printf("P %d\n", seen)
				printed, printAt = seen, now
			}
		}
	}
	tick.Stop()
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	stopErr := w.stop(sctx)
	var lastNanos int64
	if !last.IsZero() {
		lastNanos = last.UnixNano()
	}
	fmt.Printf("DONE %d %d %d\n", w.completed(), w.handled(), lastNanos)
	if stopErr != nil {
		return fail(stopErr)
	}
	return 0
}

// slotsWorker is one system in a worker process.
type slotsWorker interface {
	start(ctx context.Context) error
	stop(ctx context.Context) error
	completed() int64 // completions in the database, as the system reports them
	handled() int64   // handler calls
}

type skiplockSlotsWorker struct {
	client  *queue.Client
	runner  *queue.Runner
	handles atomic.Int64
}

func newSkiplockSlotsWorker(pool *pgxpool.Pool, spec slotsSpec) (*skiplockSlotsWorker, error) {
	w := &skiplockSlotsWorker{}
	var err error
	if w.client, err = queue.New(pool, &queue.Config{Schema: skiplockSchema}); err != nil {
		return nil, err
	}
	w.runner, err = queue.NewRunner(w.client, &queue.RunnerConfig{
		Queue: benchQueue, Concurrency: spec.Slots, PollInterval: slotsPoll, // ClaimSize: the default, Concurrency
		Handler: func(context.Context, *batch.Batch) error {
			w.handles.Add(1)
			return nil
		},
	})
	if err != nil {
		_ = w.client.Close()
		return nil, err
	}
	return w, nil
}

func (w *skiplockSlotsWorker) start(ctx context.Context) error { return w.runner.Start(ctx) }

func (w *skiplockSlotsWorker) stop(ctx context.Context) error {
	err := w.runner.Stop(ctx)
	return errors.Join(err, w.client.Close())
}

func (w *skiplockSlotsWorker) completed() int64 { return w.runner.Stats().Completed }
func (w *skiplockSlotsWorker) handled() int64   { return w.handles.Load() }

type riverSlotsWorker struct {
	client  *river.Client[pgx.Tx]
	cancel  func()
	counted chan struct{}
	done    atomic.Int64
	handles atomic.Int64
}

func newRiverSlotsWorker(pool *pgxpool.Pool, spec slotsSpec) (*riverSlotsWorker, error) {
	i := slices.IndexFunc(riverSlotsTunings, func(t riverTuning) bool { return t.name == spec.Tuning })
	if i < 0 {
		return nil, fmt.Errorf("unknown River tuning %q", spec.Tuning)
	}
	t := riverSlotsTunings[i]
	w := &riverSlotsWorker{counted: make(chan struct{})}
	workers := river.NewWorkers()
	river.AddWorker(workers, river.WorkFunc(func(context.Context, *river.Job[riverArgs]) error {
		w.handles.Add(1)
		return nil
	}))
	var err error
	w.client, err = river.NewClient(riverpgxv5.New(pool), &river.Config{
		Schema:            riverSchema,
		Logger:            quietLogger(),
		FetchCooldown:     t.cooldown,
		FetchPollInterval: t.poll,
		Workers:           workers,
		Queues:            map[string]river.QueueConfig{benchQueue: {MaxWorkers: spec.Slots}},
	})
	if err != nil {
		return nil, err
	}
	// Completion events come once River's completer has written the
	// completion; a full subscription channel would drop them.
	events, cancel := w.client.SubscribeConfig(&river.SubscribeConfig{ChanSize: spec.Rows + 1000, Kinds: []river.EventKind{river.EventKindJobCompleted}})
	w.cancel = cancel
	go func() {
		defer close(w.counted)
		for ev := range events {
			if ev == nil {
				return
			}
			w.done.Add(1)
		}
	}()
	return w, nil
}

func (w *riverSlotsWorker) start(ctx context.Context) error { return w.client.Start(ctx) }

func (w *riverSlotsWorker) stop(ctx context.Context) error {
	err := w.client.Stop(ctx)
	w.cancel()
	<-w.counted
	return err
}

func (w *riverSlotsWorker) completed() int64 { return w.done.Load() }
func (w *riverSlotsWorker) handled() int64   { return w.handles.Load() }

// slotsRows is the prefill of one drain: 1,000 batches per handler slot
// in all processes (about a second of work or more on the reference
// machine), at least slotsMinRows, at most limit.
func slotsRows(slots, processes, limit int) int {
	return min(limit, max(slotsMinRows, 1000*slots*processes))
}

// slotsChild is one worker process, seen from the parent.
type slotsChild struct {
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	count    atomic.Int64 // its latest progress report
	ready    chan struct{}
	final    chan slotsFinal // its DONE line (buffered)
	exited   chan struct{}   // its stdout ended
	waitOnce sync.Once
	waitErr  error
}

// slotsFinal is a worker process's DONE line.
type slotsFinal struct {
	completed, handled int64
	lastNanos          int64 // wall clock of its last completion seen; 0 if none
}

// startSlotsChild starts a worker process running spec. Each of its
// progress reports nudges progress (without blocking), and so does its end.
func startSlotsChild(spec slotsSpec, progress chan<- struct{}) (*slotsChild, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-test.run=^$") // a test binary that does not dispatch runs no test
	cmd.Env = append(os.Environ(), slotsChildEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlives the harness
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &slotsChild{cmd: cmd, stdin: stdin, ready: make(chan struct{}), final: make(chan slotsFinal, 1), exited: make(chan struct{})}
	go c.read(stdout, progress)
	return c, nil
}

func (c *slotsChild) read(out io.Reader, progress chan<- struct{}) {
	nudge := func() {
		select {
		case progress <- struct{}{}:
		default:
		}
	}
	defer nudge()
	defer close(c.exited)
	var readyOnce sync.Once
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 1 && f[0] == "READY":
			readyOnce.Do(func() { close(c.ready) })
		case len(f) == 2 && f[0] == "P":
			if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				c.count.Store(n)
				nudge()
			}
		case len(f) == 4 && f[0] == "DONE":
			var d slotsFinal
			var errs [3]error
			d.completed, errs[0] = strconv.ParseInt(f[1], 10, 64)
			d.handled, errs[1] = strconv.ParseInt(f[2], 10, 64)
			d.lastNanos, errs[2] = strconv.ParseInt(f[3], 10, 64)
			if errors.Join(errs[:]...) == nil {
				select {
				case c.final <- d:
				default:
				}
			}
		}
	}
}

// wait reaps the process once its output has been read.
func (c *slotsChild) wait() error {
	c.waitOnce.Do(func() {
		<-c.exited
		c.waitErr = c.cmd.Wait()
	})
	return c.waitErr
}

// kill ends the process if it still runs, and reaps it.
func (c *slotsChild) kill() {
	_ = c.cmd.Process.Kill()
	_ = c.wait()
}

// slotsResult is one drain.
type slotsResult struct {
	completed int           // completions by the end of the drain, or by the cap
	elapsed   time.Duration // GO → the last completion, or the cap
	capped    bool
	cpu       cpuUse // from GO until the parent saw the drain end (the server's part is what counts)
}

func (d slotsResult) rate() float64 { return float64(d.completed) / d.elapsed.Seconds() }

// drainSlots drains a queue prefilled with n batches of system with procs
// worker processes of slots handler slots each, and checks the counts: the
// workers' completions add up to the database's, nothing was completed or
// handled twice, nothing was lost.
func (e *env) drainSlots(ctx context.Context, v variant, slots, procs, n int, cap time.Duration) (res slotsResult, err error) {
	spec := slotsSpec{System: v.system, Tuning: v.config, URL: e.url, Slots: slots, Rows: n}
	progress := make(chan struct{}, 1)
	children := make([]*slotsChild, 0, procs)
	defer func() {
		for _, c := range children {
			c.kill()
		}
	}()
	for range procs {
		c, err := startSlotsChild(spec, progress)
		if err != nil {
			return res, fmt.Errorf("start a worker process: %w", err)
		}
		children = append(children, c)
	}
	readyBy := time.NewTimer(time.Minute)
	defer readyBy.Stop()
	for i, c := range children {
		select {
		case <-c.ready:
		case <-c.exited:
			return res, fmt.Errorf("worker process %d exited before it was ready", i)
		case <-readyBy.C:
			return res, fmt.Errorf("worker process %d not ready within a minute", i)
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}
	sum := func() (s int64) {
		for _, c := range children {
			s += c.count.Load()
		}
		return s
	}
	died := func() error {
		for i, c := range children {
			select {
			case <-c.exited:
				return fmt.Errorf("worker process %d ended during the drain", i)
			default:
			}
		}
		return nil
	}

	c0, t0 := e.cpuNow(), time.Now()
	for i, c := range children {
		if _, err := io.WriteString(c.stdin, "GO\n"); err != nil {
			return res, fmt.Errorf("worker process %d: GO: %w", i, err)
		}
	}
	capAt := time.NewTimer(cap)
	defer capAt.Stop()
	var seenEnd time.Time
wait:
	for {
		select {
		case <-progress:
			if err := died(); err != nil {
				return res, err
			}
			if sum() >= int64(n) {
				seenEnd = time.Now()
				break wait
			}
		case <-capAt.C:
			res.capped, res.completed, res.elapsed = true, int(sum()), time.Since(t0)
			break wait
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}
	res.cpu = e.cpuNow().sub(c0)

	for _, c := range children {
		_, _ = io.WriteString(c.stdin, "STOP\n")
		_ = c.stdin.Close()
	}
	finals := make([]slotsFinal, len(children))
	doneBy := time.NewTimer(2 * time.Minute)
	defer doneBy.Stop()
	for i, c := range children {
		select {
		case <-c.exited:
		case <-doneBy.C:
			return res, fmt.Errorf("worker process %d did not finish within 2 minutes of STOP", i)
		}
		select {
		case finals[i] = <-c.final:
		default:
			return res, fmt.Errorf("worker process %d ended without reporting its counts", i)
		}
		if err := c.wait(); err != nil {
			return res, fmt.Errorf("worker process %d: %w", i, err)
		}
	}
	var completed, handled, last int64
	for _, f := range finals {
		completed += f.completed
		handled += f.handled
		last = max(last, f.lastNanos)
	}
	if !res.capped {
		res.completed = n
		res.elapsed = time.Unix(0, last).Sub(t0)
		if res.elapsed <= 0 { // no completion seen at all cannot drain; be safe
			res.elapsed = seenEnd.Sub(t0)
		}
	}
	return res, e.checkSlots(ctx, v.system, n, completed, handled, res.capped)
}

// checkSlots checks a drain of n batches of system after its workers
// stopped: they reported completed completions and handled handler calls.
func (e *env) checkSlots(ctx context.Context, system string, n int, completed, handled int64, capped bool) error {
	var done, left int64
	switch system {
	case SystemSkiplock:
		var distinct, held int64
		err := e.pool.QueryRow(ctx, `SELECT
	(SELECT count(*) FROM `+qs("batch_done")+` WHERE queue = $1),
	(SELECT count(DISTINCT id) FROM `+qs("batch_done")+` WHERE queue = $1),
	(SELECT count(*) FROM `+qs("batch")+` WHERE queue = $1),
	(SELECT count(*) FROM `+qs("batch")+` WHERE queue = $1 AND state <> 'available')`, benchQueue).Scan(&done, &distinct, &left, &held)
		switch {
		case err != nil:
			return fmt.Errorf("check: %w", err)
		case done != distinct:
			return fmt.Errorf("check: %d batches completed more than once", done-distinct)
		case held != 0:
			return fmt.Errorf("check: %d batches still leased or dead after the workers stopped", held)
		}
	case SystemRiver:
		var total int64
		err := e.rpool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FILTER (WHERE state = 'available'), count(*)
	FROM `+qr("river_job")+` WHERE queue = $1`, benchQueue).Scan(&done, &left, &total)
		switch {
		case err != nil:
			return fmt.Errorf("check: %w", err)
		case total != int64(n):
			return fmt.Errorf("check: %d jobs in the table, %d prefilled", total, n)
		}
	default:
		return fmt.Errorf("check: unknown system %q", system)
	}
	switch {
	case done != completed:
		return fmt.Errorf("check: the workers report %d completions, the database has %d", completed, done)
	case done+left != int64(n):
		return fmt.Errorf("check: %d completed and %d left of %d: %d lost or in another state", done, left, n, int64(n)-done-left)
	case handled != completed:
		return fmt.Errorf("check: %d handler calls for %d completions", handled, completed)
	case !capped && done != int64(n):
		return fmt.Errorf("check: drained, but %d of %d completed", done, n)
	}
	return nil
}

// runSlots measures claim+complete at equal handler slots per process for
// every slot count and process count, skiplock and River (each of
// riverSlotsTunings) back to back, in an order that alternates between
// repetitions.
func runSlots(ctx context.Context, cfg *Config, e *env, rep *Report, prog *progress) error {
	variants := []variant{{system: SystemSkiplock}}
	for _, t := range riverSlotsTunings {
		variants = append(variants, variant{SystemRiver, t.name})
	}
	type key struct {
		v            variant
		slots, procs int
	}
	rates, serverCPU := map[key][]float64{}, map[key][]float64{}
	cappedAny := map[string]bool{}
	for r := 0; r < cfg.Reps; r++ {
		order := slices.Clone(variants)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, s := range cfg.Slots {
			for _, p := range cfg.Processes {
				n := slotsRows(s, p, cfg.SlotsRows)
				for _, v := range order {
					if err := e.prefill(ctx, v.system, n); err != nil {
						return err
					}
					d, err := e.drainSlots(ctx, v, s, p, n, cfg.SlotsCap)
					if err != nil {
						return fmt.Errorf("%s slots=%d processes=%d: %w", v, s, p, err)
					}
					k := key{v, s, p}
					rates[k] = append(rates[k], d.rate())
					if _, cs := d.cpu.perRow(d.completed); cs >= 0 {
						serverCPU[k] = append(serverCPU[k], cs)
					}
					if d.capped {
						cappedAny[v.String()] = true
					}
					prog.step("slots %-24s slots=%-3d processes=%-2d rep %d/%d: %8.0f batches/s (%d in %s%s)",
						v, s, p, r+1, cfg.Reps, d.rate(), d.completed, d.elapsed.Round(time.Millisecond), cappedMark(d.capped))
				}
			}
		}
	}
	for _, s := range cfg.Slots {
		for _, p := range cfg.Processes {
			best, bestConfig := 0.0, ""
			for _, v := range variants {
				k := key{v, s, p}
				m := median(rates[k])
				params := []any{"slots", s, "processes", p, "reps", cfg.Reps}
				if v.config != "" {
					params = append(params, "config", v.config)
				}
				rep.add(ScenarioSlots, v.system, "batches_per_s", m, "batches/s", params...)
				if len(serverCPU[k]) > 0 {
					rep.add(ScenarioSlots, v.system, "server_cpu_us_per_batch", median(serverCPU[k]), "µs", params...)
				}
				if v.system == SystemRiver && m > best {
					best, bestConfig = m, v.config
				}
			}
			rep.add(ScenarioSlots, SystemRiver, "best_batches_per_s", best, "batches/s", "slots", s, "processes", p, "config", bestConfig)
		}
	}
	for v := range cappedAny {
		rep.note("slots: some %s drains hit the %s cap before the queue was empty; their rate is what was completed within the cap", v, cfg.SlotsCap)
	}
	return nil
}

// deriveSlots adds skiplock's ratio over River's best at each slot and
// process count, and checks the targets: at least 2× from 16 slots up,
// at least 1× at one slot.
func deriveSlots(rep *Report, check func(name, want string, got float64, unit string, met bool)) {
	procs := paramValues(rep, ScenarioSlots, SystemSkiplock, "batches_per_s", "processes")
	for _, s := range paramValues(rep, ScenarioSlots, SystemSkiplock, "batches_per_s", "slots") {
		for _, p := range procs {
			sk, ok := rep.get(ScenarioSlots, SystemSkiplock, "batches_per_s", "slots", s, "processes", p)
			rv, rok := rep.get(ScenarioSlots, SystemRiver, "best_batches_per_s", "slots", s, "processes", p)
			if !ok || !rok || rv <= 0 {
				continue
			}
			r := sk / rv
			rep.add(ScenarioSlots, SystemSkiplock, "ratio_over_river", r, "x", "slots", s, "processes", p)
			name := fmt.Sprintf("claim+complete, %v slot(s) × %v process(es): skiplock / River", s, p)
			switch slots, _ := strconv.ParseFloat(fmt.Sprint(s), 64); {
			case slots >= 16:
				check(name, ">= 2", r, "x", r >= 2)
			case slots == 1:
				check(name, ">= 1", r, "x", r >= 1)
			}
		}
	}
}

// slotsTable writes the slots scenario's rows: each system's rate at each
// slot and process count, River's per fetch tuning and its best, the ratio
// and the server's CPU per batch.
func (r *Report) slotsTable(w io.Writer) {
	slotCounts := paramValues(r, ScenarioSlots, SystemSkiplock, "batches_per_s", "slots")
	if len(slotCounts) == 0 {
		return
	}
	procs := paramValues(r, ScenarioSlots, SystemSkiplock, "batches_per_s", "processes")
	fmt.Fprintln(w, "\nClaim+complete at equal handler slots per worker process, no-op handler (batches/s, median)")
	head := "slots\tprocesses\tskiplock"
	for _, t := range riverSlotsTunings {
		head += "\tRiver, " + t.name
	}
	fmt.Fprintln(w, head+"\tskiplock/River best\tserver CPU µs/batch: skiplock\tRiver best\t")
	for _, s := range slotCounts {
		for _, p := range procs {
			row := fmt.Sprintf("%v\t%v\t%s", s, p, r.cell(ScenarioSlots, SystemSkiplock, "batches_per_s", "slots", s, "processes", p))
			for _, t := range riverSlotsTunings {
				row += "\t" + r.cell(ScenarioSlots, SystemRiver, "batches_per_s", "slots", s, "processes", p, "config", t.name)
			}
			riverCPU := "-"
			if best := r.slotsBestConfig(s, p); best != "" {
				riverCPU = r.cell(ScenarioSlots, SystemRiver, "server_cpu_us_per_batch", "slots", s, "processes", p, "config", best)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t\n", row,
				r.cell(ScenarioSlots, SystemSkiplock, "ratio_over_river", "slots", s, "processes", p),
				r.cell(ScenarioSlots, SystemSkiplock, "server_cpu_us_per_batch", "slots", s, "processes", p),
				riverCPU)
		}
	}
}

// slotsBestConfig returns the River tuning of its best rate at s slots and
// p processes, or "".
func (r *Report) slotsBestConfig(s, p any) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.Figures {
		if f.Scenario == ScenarioSlots && f.System == SystemRiver && f.Metric == "best_batches_per_s" &&
			fmt.Sprint(f.Params["slots"]) == fmt.Sprint(s) && fmt.Sprint(f.Params["processes"]) == fmt.Sprint(p) {
			if c, ok := f.Params["config"]; ok {
				return fmt.Sprint(c)
			}
		}
	}
	return ""
}
