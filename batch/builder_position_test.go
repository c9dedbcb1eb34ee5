package batch_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
)

type record struct {
	part   int32
	offset int64
}

// positionBuilder returns a Builder over records with Position set, and a
// function returning the cuts flushed so far.
func positionBuilder(t *testing.T, maxCount int) (*batch.Builder[record], func() []batch.Cut[record]) {
	t.Helper()
	var mu sync.Mutex
	var cuts []batch.Cut[record]
	b, err := batch.NewBuilder(&batch.BuilderConfig[record]{
		MaxCount: maxCount,
		MaxAge:   time.Hour,
		Position: func(r record) batch.Source {
			return batch.Source{Topic: "orders", Partition: r.part, Start: r.offset, End: r.offset + 1}
		},
		Flush: func(_ context.Context, c batch.Cut[record]) error {
			mu.Lock()
			defer mu.Unlock()
			cuts = append(cuts, c)
			return nil
		},
	})
	require.NoError(t, err)
	return b, func() []batch.Cut[record] {
		mu.Lock()
		defer mu.Unlock()
		return append([]batch.Cut[record](nil), cuts...)
	}
}

func keys(cuts []batch.Cut[record]) []string {
	out := make([]string, len(cuts))
	for i, c := range cuts {
		out[i] = c.Key()
	}
	return out
}

// A restarted producer that re-reads the same offsets from a cut boundary
// gets the same keys, although its Seq starts again at 1.
func TestBuilderKeysFromPositionsSurviveRestart(t *testing.T) {
	ctx := context.Background()
	run := func(from, to int64) []batch.Cut[record] {
		b, cuts := positionBuilder(t, 10)
		for o := from; o < to; o++ {
			require.NoError(t, b.Add(ctx, record{part: 2, offset: o}, 1))
		}
		require.NoError(t, b.Close(ctx))
		return cuts()
	}
	first := run(100, 130)
	require.Equal(t, []string{"src1:orders:2:100-110", "src1:orders:2:110-120", "src1:orders:2:120-130"}, keys(first))
	require.Equal(t, batch.Source{Topic: "orders", Partition: 2, Start: 110, End: 120}, first[1].Source)

	// The producer crashed after flushing cut 2 but committed only offset
	// 110: it re-reads from there. Seq restarts; keys repeat for the same ranges.
	again := run(110, 140)
	require.Equal(t, uint64(1), again[0].Seq)
	require.Equal(t, []string{"src1:orders:2:110-120", "src1:orders:2:120-130", "src1:orders:2:130-140"}, keys(again))
}

func TestBuilderPositionCuts(t *testing.T) {
	ctx := context.Background()
	b, cuts := positionBuilder(t, 100)
	add := func(part int32, offset int64) {
		require.NoError(t, b.Add(ctx, record{part: part, offset: offset}, 1))
	}
	add(0, 5)
	add(0, 9) // a gap is inside the range
	add(1, 3) // another partition cuts
	add(1, 4)
	add(1, 2) // a rewind cuts
	require.NoError(t, b.Close(ctx))
	got := cuts()
	require.Len(t, got, 3)
	require.Equal(t, batch.Source{Topic: "orders", Partition: 0, Start: 5, End: 10}, got[0].Source)
	require.Equal(t, batch.ReasonPosition, got[0].Reason)
	require.Equal(t, batch.Source{Topic: "orders", Partition: 1, Start: 3, End: 5}, got[1].Source)
	require.Equal(t, batch.ReasonPosition, got[1].Reason)
	require.Equal(t, batch.Source{Topic: "orders", Partition: 1, Start: 2, End: 3}, got[2].Source)
	require.Equal(t, batch.ReasonFlush, got[2].Reason)
	require.Equal(t, "position", batch.ReasonPosition.String())
	// Distinct ranges never share a key.
	require.NotEqual(t, got[1].Key(), got[2].Key())
}

func TestBuilderRefusesInvalidPosition(t *testing.T) {
	ctx := context.Background()
	b, cuts := positionBuilder(t, 10)
	err := b.Add(ctx, record{part: -1, offset: 0}, 1)
	requireInvalid(t, err, "position", "partition: negative")
	n, _ := b.Pending()
	require.Zero(t, n, "a refused item is not held")
	require.NoError(t, b.Close(ctx))
	require.Empty(t, cuts())
}

func TestCutKeyWithoutPosition(t *testing.T) {
	require.Empty(t, batch.Cut[int]{Seq: 1}.Key())
}
