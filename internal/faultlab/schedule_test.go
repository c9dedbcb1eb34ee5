package faultlab

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestScheduleIsAFunctionOfSeedAndDuration(t *testing.T) {
	for _, seed := range []int64{1, 42, 987654321} {
		a := NewSchedule(seed, 30*time.Minute, nil)
		b := NewSchedule(seed, 30*time.Minute, nil)
		require.Equal(t, a, b)
		require.Equal(t, a.String(), b.String())
		require.NotEqual(t, a.String(), NewSchedule(seed+1, 30*time.Minute, nil).String())
	}
}

func TestScheduleShape(t *testing.T) {
	for seed := int64(1); seed <= 50; seed++ {
		s := NewSchedule(seed, 30*time.Minute, nil)
		kinds := map[Kind]int{}
		var lastTopoEnd time.Duration
		lastEnd := map[Kind]time.Duration{}
		for _, f := range s.Faults {
			kinds[f.Kind]++
			require.Less(t, f.Start, s.Duration-scheduleTail, "seed %d: %s", seed, f)
			if f.Kind.Topology() {
				require.GreaterOrEqual(t, f.Start, lastTopoEnd, "seed %d: topology faults overlap at %s", seed, f)
				lastTopoEnd = f.Start + f.Window + topologyOverhead
				continue
			}
			require.GreaterOrEqual(t, f.Start, lastEnd[f.Kind], "seed %d: two %s overlap", seed, f.Kind)
			lastEnd[f.Kind] = f.Start + f.Window
			for _, q := range s.Quiet {
				require.False(t, f.Start < q+QuietPeriod && f.Start+f.Window > q, "seed %d: %s runs in the quiet period at %s", seed, f, q)
			}
		}
		require.NotEmpty(t, s.Quiet, "seed %d", seed)
		for _, k := range AllKinds {
			require.Positive(t, kinds[k], "seed %d: no %s in 30 minutes", seed, k)
		}
	}
}

func TestPercentile(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3}
	require.Equal(t, time.Duration(3), Percentile(ds, 50))
	require.Equal(t, time.Duration(5), Percentile(ds, 99))
	require.Equal(t, time.Duration(5), Percentile(ds, 100))
	require.Zero(t, Percentile(nil, 50))
}
