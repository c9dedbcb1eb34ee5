package harness

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSlots runs the slots scenario tiny on a throwaway server — skiplock
// and River in real worker processes (this test binary re-executed) — and
// checks its figures, its ratios and targets, its table rows, and that the
// count check refuses counts that do not add up.
func TestSlots(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and worker processes")
	}
	cfg, err := Preset("quick")
	require.NoError(t, err)
	cfg.Scenarios = []string{ScenarioSlots}
	cfg.Reps = 1
	cfg.Slots = []int{1, 4}
	cfg.Processes = []int{1, 2}
	cfg.SlotsRows = 300
	cfg.SlotsCap = 30 * time.Second
	require.NoError(t, cfg.validate())
	var progressOut bytes.Buffer
	prog := newProgress(&progressOut)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e, err := startEnv(ctx, "", false, prog)
	require.NoError(t, err)
	defer e.close()

	rep := &Report{}
	require.NoError(t, runSlots(ctx, cfg, e, rep, prog), "progress:\n%s", progressOut.String())
	derive(rep)
	require.Empty(t, rep.Notes, "no drain may hit the cap")
	for _, s := range cfg.Slots {
		for _, p := range cfg.Processes {
			v, ok := rep.get(ScenarioSlots, SystemSkiplock, "batches_per_s", "slots", s, "processes", p, "reps", 1)
			require.True(t, ok, "skiplock slots=%d processes=%d", s, p)
			require.Positive(t, v)
			for _, tn := range riverSlotsTunings {
				v, ok := rep.get(ScenarioSlots, SystemRiver, "batches_per_s", "slots", s, "processes", p, "config", tn.name)
				require.True(t, ok, "River %s slots=%d processes=%d", tn.name, s, p)
				require.Positive(t, v)
			}
			best, ok := rep.get(ScenarioSlots, SystemRiver, "best_batches_per_s", "slots", s, "processes", p)
			require.True(t, ok)
			sk, _ := rep.get(ScenarioSlots, SystemSkiplock, "batches_per_s", "slots", s, "processes", p)
			ratio, ok := rep.get(ScenarioSlots, SystemSkiplock, "ratio_over_river", "slots", s, "processes", p)
			require.True(t, ok)
			require.InDelta(t, sk/best, ratio, 1e-9)
		}
	}
	// Targets: at one slot (≥ 1×) for each process count; none at 4 slots.
	var names []string
	for _, tg := range rep.Targets {
		names = append(names, tg.Name)
	}
	require.ElementsMatch(t, []string{
		"claim+complete, 1 slot(s) × 1 process(es): skiplock / River",
		"claim+complete, 1 slot(s) × 2 process(es): skiplock / River",
	}, names)
	require.Contains(t, progressOut.String(), "slots skiplock")
	require.Contains(t, progressOut.String(), "slots river (cooldown 1ms)")
	var table bytes.Buffer
	require.NoError(t, rep.WriteTable(&table))
	require.Contains(t, table.String(), "Claim+complete at equal handler slots per worker process")
	require.Contains(t, table.String(), "River, cooldown 1ms")

	// The count check fails when the counts do not add up.
	require.NoError(t, e.prefill(ctx, SystemSkiplock, 10))
	require.NoError(t, e.checkSlots(ctx, SystemSkiplock, 10, 0, 0, true), "capped before anything completed")
	require.ErrorContains(t, e.checkSlots(ctx, SystemSkiplock, 10, 0, 0, false), "drained, but 0 of 10")
	require.ErrorContains(t, e.checkSlots(ctx, SystemSkiplock, 10, 1, 1, true), "the workers report 1 completions, the database has 0")
	require.ErrorContains(t, e.checkSlots(ctx, SystemSkiplock, 11, 0, 0, true), "lost")
	require.NoError(t, e.prefill(ctx, SystemRiver, 10))
	require.ErrorContains(t, e.checkSlots(ctx, SystemRiver, 10, 0, 1, true), "1 handler calls for 0 completions")
	require.ErrorContains(t, e.checkSlots(ctx, SystemRiver, 12, 0, 0, true), "10 jobs in the table, 12 prefilled")
}

func TestSlotsRows(t *testing.T) {
	require.Equal(t, slotsMinRows, slotsRows(1, 1, 60000))
	require.Equal(t, 16000, slotsRows(16, 1, 60000))
	require.Equal(t, 60000, slotsRows(256, 4, 60000))
	require.Equal(t, 300, slotsRows(1, 1, 300), "the limit wins over the floor")
	require.True(t, strings.Contains(strings.Join(knownScenarios, ","), ScenarioSlots))
	require.NotContains(t, AllScenarios, ScenarioSlots, "slots runs only when named")
}
