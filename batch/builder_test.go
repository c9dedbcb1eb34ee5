package batch_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
)

// waitTimeout bounds every wait for something that should happen.
const waitTimeout = 10 * time.Second

// recorder is a FlushFunc that records every call and can be told to fail.
type recorder struct {
	mu       sync.Mutex
	calls    []batch.Cut[int] // every call, including failed ones
	ok       []batch.Cut[int] // successful calls
	fail     func(c batch.Cut[int], call int) error
	inFlight atomic.Int32
	overlap  atomic.Bool
	notify   chan batch.Cut[int] // receives successful cuts when non-nil
}

func (r *recorder) flush(ctx context.Context, c batch.Cut[int]) error {
	if r.inFlight.Add(1) != 1 {
		r.overlap.Store(true)
	}
	defer r.inFlight.Add(-1)
	r.mu.Lock()
	r.calls = append(r.calls, c)
	var err error
	if r.fail != nil {
		err = r.fail(c, len(r.calls))
	}
	if err == nil {
		r.ok = append(r.ok, c)
	}
	r.mu.Unlock()
	if err == nil && r.notify != nil {
		r.notify <- c
	}
	return err
}

func (r *recorder) successes() []batch.Cut[int] {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]batch.Cut[int](nil), r.ok...)
}

func (r *recorder) allCalls() []batch.Cut[int] {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]batch.Cut[int](nil), r.calls...)
}

func newBuilder(t *testing.T, cfg batch.BuilderConfig[int]) *batch.Builder[int] {
	t.Helper()
	b, err := batch.NewBuilder(&cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		_ = b.Close(ctx) // stop the goroutine even when a test failed early
	})
	return b
}

// waitCut returns the next cut from ch, failing the test after waitTimeout.
func waitCut(t *testing.T, ch <-chan batch.Cut[int]) batch.Cut[int] {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for a flush")
		return batch.Cut[int]{}
	}
}

func requireFlushError(t *testing.T, err error, seq uint64, cause error) {
	t.Helper()
	var fe *batch.FlushError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, seq, fe.Seq)
	require.ErrorIs(t, err, cause)
	require.Equal(t, fmt.Sprintf("batch: flush cut %d: %v", seq, cause), err.Error())
}

func TestNewBuilderValidation(t *testing.T) {
	flush := func(context.Context, batch.Cut[int]) error { return nil }
	tests := []struct {
		name      string
		cfg       *batch.BuilderConfig[int]
		wantField string // "" for valid
	}{
		{"nil config", nil, "Flush"},
		{"no Flush", &batch.BuilderConfig[int]{MaxCount: 3}, "Flush"},
		{"negative MaxCount", &batch.BuilderConfig[int]{Flush: flush, MaxCount: -1}, "MaxCount"},
		{"negative MaxBytes", &batch.BuilderConfig[int]{Flush: flush, MaxBytes: -1}, "MaxBytes"},
		{"negative MaxAge", &batch.BuilderConfig[int]{Flush: flush, MaxAge: -time.Second}, "MaxAge"},
		{"defaults", &batch.BuilderConfig[int]{Flush: flush}, ""},
		{"all set", &batch.BuilderConfig[int]{Flush: flush, MaxCount: 1, MaxBytes: math.MaxInt64, MaxAge: time.Nanosecond}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := batch.NewBuilder(tt.cfg)
			if tt.wantField == "" {
				require.NoError(t, err)
				require.NoError(t, b.Close(context.Background()))
				return
			}
			require.Nil(t, b)
			require.ErrorIs(t, err, batch.ErrInvalid)
			var ve *batch.ValidationError
			require.ErrorAs(t, err, &ve)
			require.Equal(t, tt.wantField, ve.Field)
		})
	}
}

func TestBuilderConfigWithDefaults(t *testing.T) {
	var nilCfg *batch.BuilderConfig[int]
	d := nilCfg.WithDefaults()
	require.Equal(t, batch.DefaultMaxCount, d.MaxCount)
	require.Equal(t, batch.DefaultMaxBytes, d.MaxBytes)
	require.Equal(t, batch.DefaultMaxAge, d.MaxAge)
	require.NotNil(t, d.Now)
	require.Equal(t, 1000, batch.DefaultMaxCount)
	require.Equal(t, int64(8<<20), batch.DefaultMaxBytes)
	require.Equal(t, time.Second, batch.DefaultMaxAge)

	in := &batch.BuilderConfig[int]{MaxCount: 5, MaxAge: time.Minute}
	out := in.WithDefaults()
	require.NotSame(t, in, out)
	require.Equal(t, 5, out.MaxCount)
	require.Equal(t, batch.DefaultMaxBytes, out.MaxBytes)
	require.Equal(t, time.Minute, out.MaxAge)
	require.Zero(t, in.MaxBytes, "WithDefaults modified its receiver")
	require.Nil(t, in.Now, "WithDefaults modified its receiver")
}

func TestFlushReasonString(t *testing.T) {
	tests := []struct {
		r    batch.FlushReason
		want string
	}{
		{batch.ReasonCount, "count"},
		{batch.ReasonBytes, "bytes"},
		{batch.ReasonAge, "age"},
		{batch.ReasonFlush, "flush"},
		{0, "FlushReason(0)"},
		{99, "FlushReason(99)"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, tt.r.String())
	}
}

func TestBuilderCuts(t *testing.T) {
	type cut struct {
		items  []int
		bytes  int64
		reason batch.FlushReason
	}
	tests := []struct {
		name     string
		maxCount int
		maxBytes int64
		sizes    []int64 // item i has value i and size sizes[i]
		want     []cut   // after Close
	}{
		{"by count", 3, 1000, []int64{1, 1, 1, 1, 1, 1, 1},
			[]cut{{[]int{0, 1, 2}, 3, batch.ReasonCount}, {[]int{3, 4, 5}, 3, batch.ReasonCount}, {[]int{6}, 1, batch.ReasonFlush}}},
		{"count of one", 1, 1000, []int64{5, 6},
			[]cut{{[]int{0}, 5, batch.ReasonCount}, {[]int{1}, 6, batch.ReasonCount}}},
		{"bytes reached exactly", 100, 10, []int64{4, 6, 3},
			[]cut{{[]int{0, 1}, 10, batch.ReasonBytes}, {[]int{2}, 3, batch.ReasonFlush}}},
		{"next item would exceed", 100, 10, []int64{4, 4, 4, 4},
			[]cut{{[]int{0, 1}, 8, batch.ReasonBytes}, {[]int{2, 3}, 8, batch.ReasonFlush}}},
		{"oversize item after pending", 100, 10, []int64{3, 25, 2},
			[]cut{{[]int{0}, 3, batch.ReasonBytes}, {[]int{1}, 25, batch.ReasonBytes}, {[]int{2}, 2, batch.ReasonFlush}}},
		{"oversize first item", 100, 10, []int64{11, 1},
			[]cut{{[]int{0}, 11, batch.ReasonBytes}, {[]int{1}, 1, batch.ReasonFlush}}},
		{"oversize items in a row", 100, 10, []int64{50, 60},
			[]cut{{[]int{0}, 50, batch.ReasonBytes}, {[]int{1}, 60, batch.ReasonBytes}}},
		{"zero sizes cut by count", 2, 10, []int64{0, 0, 0},
			[]cut{{[]int{0, 1}, 0, batch.ReasonCount}, {[]int{2}, 0, batch.ReasonFlush}}},
		{"count and bytes at once: count wins", 2, 10, []int64{5, 5},
			[]cut{{[]int{0, 1}, 10, batch.ReasonCount}}},
		{"huge size does not overflow", 100, 10, []int64{5, math.MaxInt64, 1},
			[]cut{{[]int{0}, 5, batch.ReasonBytes}, {[]int{1}, math.MaxInt64, batch.ReasonBytes}, {[]int{2}, 1, batch.ReasonFlush}}},
		{"nothing added", 3, 10, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			b := newBuilder(t, batch.BuilderConfig[int]{MaxCount: tt.maxCount, MaxBytes: tt.maxBytes, MaxAge: time.Hour, Flush: rec.flush})
			ctx := context.Background()
			for i, size := range tt.sizes {
				require.NoError(t, b.Add(ctx, i, size))
			}
			require.NoError(t, b.Close(ctx))

			var got []cut
			for i, c := range rec.successes() {
				require.Equal(t, uint64(i+1), c.Seq)
				require.False(t, c.Started.IsZero())
				got = append(got, cut{c.Items, c.Bytes, c.Reason})
			}
			require.Equal(t, tt.want, got)
			require.False(t, rec.overlap.Load())
			n, bytes := b.Pending()
			require.Zero(t, n)
			require.Zero(t, bytes)
		})
	}
}

func TestBuilderAddFlushesBeforeReturning(t *testing.T) {
	rec := &recorder{}
	b := newBuilder(t, batch.BuilderConfig[int]{MaxCount: 2, MaxAge: time.Hour, Flush: rec.flush})
	ctx := context.Background()
	require.NoError(t, b.Add(ctx, 1, 1))
	require.Empty(t, rec.allCalls())
	require.NoError(t, b.Add(ctx, 2, 1))
	// The cut is flushed when Add returns, not later.
	require.Len(t, rec.successes(), 1)
	require.Equal(t, []int{1, 2}, rec.successes()[0].Items)
}

func TestBuilderExplicitFlushAndPending(t *testing.T) {
	rec := &recorder{}
	b := newBuilder(t, batch.BuilderConfig[int]{MaxCount: 10, MaxAge: time.Hour, Flush: rec.flush})
	ctx := context.Background()

	require.NoError(t, b.Flush(ctx), "Flush of an empty builder")
	require.Empty(t, rec.allCalls())

	for i := range 3 {
		require.NoError(t, b.Add(ctx, i, 7))
	}
	n, bytes := b.Pending()
	require.Equal(t, 3, n)
	require.Equal(t, int64(21), bytes)

	require.NoError(t, b.Flush(ctx))
	got := rec.successes()
	require.Len(t, got, 1)
	require.Equal(t, batch.Cut[int]{Seq: 1, Items: []int{0, 1, 2}, Bytes: 21, Reason: batch.ReasonFlush, Started: got[0].Started}, got[0])
	n, bytes = b.Pending()
	require.Zero(t, n)
	require.Zero(t, bytes)

	require.NoError(t, b.Flush(ctx))
	require.Len(t, rec.allCalls(), 1, "second Flush called the FlushFunc again")

	require.NoError(t, b.Add(ctx, 3, 1))
	require.NoError(t, b.Flush(ctx))
	require.Equal(t, uint64(2), rec.successes()[1].Seq)
}

func TestBuilderCloseThenAdd(t *testing.T) {
	rec := &recorder{}
	b := newBuilder(t, batch.BuilderConfig[int]{MaxCount: 10, MaxAge: time.Hour, Flush: rec.flush})
	ctx := context.Background()
	require.NoError(t, b.Add(ctx, 1, 1))
	require.NoError(t, b.Close(ctx))
	require.Len(t, rec.successes(), 1, "Close did not flush")

	require.ErrorIs(t, b.Add(ctx, 2, 1), batch.ErrClosed)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, b.Add(cancelled, 2, 1), batch.ErrClosed, "ErrClosed is reported before ctx errors")
	n, _ := b.Pending()
	require.Zero(t, n, "an item added after Close was kept")
	require.NoError(t, b.Close(ctx), "second Close")
	require.NoError(t, b.Flush(ctx), "Flush after Close")
	require.Len(t, rec.allCalls(), 1)
}

func TestBuilderAddRejectsNegativeSize(t *testing.T) {
	rec := &recorder{}
	b := newBuilder(t, batch.BuilderConfig[int]{Flush: rec.flush})
	err := b.Add(context.Background(), 1, -1)
	require.ErrorIs(t, err, batch.ErrInvalid)
	var ve *batch.ValidationError
	require.ErrorAs(t, err, &ve)
	require.Equal(t, "size", ve.Field)
	n, _ := b.Pending()
	require.Zero(t, n)
}

func TestBuilderByAge(t *testing.T) {
	rec := &recorder{notify: make(chan batch.Cut[int], 10)}
	b := newBuilder(t, batch.BuilderConfig[int]{MaxCount: 100, MaxAge: 20 * time.Millisecond, Flush: rec.flush})
	ctx := context.Background()

	before := time.Now()
	require.NoError(t, b.Add(ctx, 1, 1))
	require.NoError(t, b.Add(ctx, 2, 1))
	c := waitCut(t, rec.notify)
	require.Equal(t, uint64(1), c.Seq)
	require.Equal(t, []int{1, 2}, c.Items)
	require.Equal(t, batch.ReasonAge, c.Reason)
	require.False(t, c.Started.Before(before))
	require.GreaterOrEqual(t, time.Since(c.Started), 20*time.Millisecond, "flushed before MaxAge")

	// The age timer re-arms for the next pending cut.
	require.NoError(t, b.Add(ctx, 3, 1))
	c = waitCut(t, rec.notify)
	require.Equal(t, uint64(2), c.Seq)
	require.Equal(t, []int{3}, c.Items)
	require.Equal(t, batch.ReasonAge, c.Reason)
}

// fakeClock is a controllable BuilderConfig.Now that counts its calls.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	calls atomic.Int64
}

func (c *fakeClock) Now() time.Time {
	c.calls.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestBuilderAgeUsesClock(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := &fakeClock{now: t0}
	rec := &recorder{notify: make(chan batch.Cut[int], 10)}
	const maxAge = 5 * time.Millisecond
	b := newBuilder(t, batch.BuilderConfig[int]{MaxCount: 100, MaxAge: maxAge, Flush: rec.flush, Now: clock.Now})
	ctx := context.Background()

	require.NoError(t, b.Add(ctx, 1, 1))
	clock.Advance(maxAge - time.Nanosecond)
	// Not yet MaxAge old by the clock: several real MaxAge periods pass
	// without a flush. (Waiting here checks an absence, not readiness.)
	before := clock.calls.Load()
	select {
	case c := <-rec.notify:
		t.Fatalf("flushed before MaxAge by the clock: %+v", c)
	case <-time.After(10 * maxAge):
	}
	// Meanwhile the goroutine re-checks about once per MaxAge (two clock
	// reads each), not in a tight loop.
	require.LessOrEqual(t, clock.calls.Load()-before, int64(2*(10+5)), "age timer spins")
	clock.Advance(time.Nanosecond)
	c := waitCut(t, rec.notify)
	require.Equal(t, batch.ReasonAge, c.Reason)
	require.Equal(t, t0, c.Started, "Started is not the clock's time of the first Add")
	require.Equal(t, []int{1}, c.Items)
}

func TestBuilderIdleDoesNotTick(t *testing.T) {
	clock := &fakeClock{now: time.Now()}
	rec := &recorder{notify: make(chan batch.Cut[int], 10)}
	const maxAge = time.Millisecond
	b := newBuilder(t, batch.BuilderConfig[int]{MaxAge: maxAge, Flush: rec.flush, Now: clock.Now})

	// Idle: the goroutine must sleep without a timer. A busy loop or a
	// ticker would read the clock about once per MaxAge.
	time.Sleep(30 * maxAge) // observing an absence of activity, not readiness
	require.Zero(t, clock.calls.Load(), "idle builder read the clock")

	require.NoError(t, b.Add(context.Background(), 1, 1))
	clock.Advance(maxAge)
	waitCut(t, rec.notify)

	// Flushed and idle again: at most a bounded number of clock reads follow.
	after := clock.calls.Load()
	time.Sleep(30 * maxAge)
	require.LessOrEqual(t, clock.calls.Load()-after, int64(2), "builder keeps working after its flush")
}

func TestBuilderFailedFlushIsRetriedInOrder(t *testing.T) {
	boom := errors.New("boom")
	failures := map[uint64]int{2: 2, 3: 1} // Seq -> how many times to fail
	rec := &recorder{}
	rec.fail = func(c batch.Cut[int], _ int) error {
		if failures[c.Seq] > 0 {
			failures[c.Seq]--
			return boom
		}
		return nil
	}
	b := newBuilder(t, batch.BuilderConfig[int]{MaxCount: 2, MaxAge: time.Hour, Flush: rec.flush})
	ctx := context.Background()

	// Cut 1 = {0,1} succeeds.
	require.NoError(t, b.Add(ctx, 0, 1))
	require.NoError(t, b.Add(ctx, 1, 1))
	// Cut 2 = {2,3} fails; its items are kept.
	require.NoError(t, b.Add(ctx, 2, 1))
	err := b.Add(ctx, 3, 1)
	requireFlushError(t, err, 2, boom)
	n, bytes := b.Pending()
	require.Equal(t, 2, n)
	require.Equal(t, int64(2), bytes)

	// The next Add retries cut 2 first (fails again), and its item is accepted.
	err = b.Add(ctx, 4, 1)
	requireFlushError(t, err, 2, boom)
	n, _ = b.Pending()
	require.Equal(t, 3, n)

	// This Add makes cut 3 = {4,5}; cut 2 now succeeds, then cut 3 fails once.
	err = b.Add(ctx, 5, 1)
	requireFlushError(t, err, 3, boom)

	// Flush retries cut 3 and cuts and flushes {6}.
	require.NoError(t, b.Add(ctx, 6, 1))
	require.NoError(t, b.Flush(ctx))

	var seqs []uint64
	var items []int
	for _, c := range rec.successes() {
		seqs = append(seqs, c.Seq)
		items = append(items, c.Items...)
	}
	require.Equal(t, []uint64{1, 2, 3, 4}, seqs, "successful flushes out of order or repeated")
	require.Equal(t, []int{0, 1, 2, 3, 4, 5, 6}, items, "items lost, duplicated or reordered")

	// Every attempt of a Seq carried the same items, in Seq order.
	var attempts []uint64
	first := map[uint64][]int{}
	for _, c := range rec.allCalls() {
		attempts = append(attempts, c.Seq)
		if prev, ok := first[c.Seq]; ok {
			require.Equal(t, prev, c.Items, "retry of cut %d changed its items", c.Seq)
		} else {
			first[c.Seq] = c.Items
		}
	}
	require.Equal(t, []uint64{1, 2, 2, 2, 3, 3, 4}, attempts)
	n, _ = b.Pending()
	require.Zero(t, n)
}

func TestBuilderCloseFailureCanBeRetried(t *testing.T) {
	down := errors.New("store down")
	var failing atomic.Bool
	failing.Store(true)
	rec := &recorder{}
	rec.fail = func(batch.Cut[int], int) error {
		if failing.Load() {
			return down
		}
		return nil
	}
	b := newBuilder(t, batch.BuilderConfig[int]{MaxCount: 10, MaxAge: time.Hour, Flush: rec.flush})
	ctx := context.Background()
	require.NoError(t, b.Add(ctx, 1, 1))
	require.NoError(t, b.Add(ctx, 2, 1))

	requireFlushError(t, b.Close(ctx), 1, down)
	require.ErrorIs(t, b.Add(ctx, 3, 1), batch.ErrClosed)
	n, _ := b.Pending()
	require.Equal(t, 2, n, "Close dropped the unflushed items")
	requireFlushError(t, b.Close(ctx), 1, down)
	requireFlushError(t, b.Flush(ctx), 1, down)

	failing.Store(false)
	require.NoError(t, b.Close(ctx))
	got := rec.successes()
	require.Len(t, got, 1)
	require.Equal(t, uint64(1), got[0].Seq)
	require.Equal(t, []int{1, 2}, got[0].Items)
	require.Equal(t, batch.ReasonFlush, got[0].Reason)
	require.NoError(t, b.Close(ctx))
	require.Len(t, rec.allCalls(), 4)
}

func TestBuilderAgeFlushErrorGoesToOnErrorAndIsRetried(t *testing.T) {
	boom := errors.New("boom")
	rec := &recorder{notify: make(chan batch.Cut[int], 10)}
	rec.fail = func(_ batch.Cut[int], call int) error {
		if call <= 2 {
			return boom
		}
		return nil
	}
	errs := make(chan error, 10)
	b := newBuilder(t, batch.BuilderConfig[int]{
		MaxCount: 100, MaxAge: 10 * time.Millisecond, Flush: rec.flush,
		OnError: func(err error) { errs <- err },
	})
	require.NoError(t, b.Add(context.Background(), 7, 3))

	for range 2 {
		select {
		case err := <-errs:
			requireFlushError(t, err, 1, boom)
		case <-time.After(waitTimeout):
			t.Fatal("OnError was not called")
		}
	}
	c := waitCut(t, rec.notify) // retried by the goroutine, without any call
	require.Equal(t, uint64(1), c.Seq)
	require.Equal(t, []int{7}, c.Items)
	require.Equal(t, int64(3), c.Bytes)
	require.Equal(t, batch.ReasonAge, c.Reason)
	require.Len(t, rec.allCalls(), 3)
	// notify fires inside the FlushFunc; the cut is dropped once it returns.
	require.Eventually(t, func() bool { n, _ := b.Pending(); return n == 0 }, waitTimeout, time.Millisecond)
}

type ctxKey struct{}

func TestBuilderContext(t *testing.T) {
	t.Run("cancelled Add is not accepted", func(t *testing.T) {
		rec := &recorder{}
		b := newBuilder(t, batch.BuilderConfig[int]{MaxCount: 1, Flush: rec.flush})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := b.Add(ctx, 1, 1)
		require.ErrorIs(t, err, context.Canceled)
		var fe *batch.FlushError
		require.False(t, errors.As(err, &fe), "a rejected item must not look accepted")
		n, _ := b.Pending()
		require.Zero(t, n)
		require.Empty(t, rec.allCalls())
	})

	t.Run("cancelled Flush keeps items", func(t *testing.T) {
		rec := &recorder{}
		b := newBuilder(t, batch.BuilderConfig[int]{MaxCount: 10, MaxAge: time.Hour, Flush: rec.flush})
		require.NoError(t, b.Add(context.Background(), 1, 1))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		require.ErrorIs(t, b.Flush(ctx), context.Canceled)
		n, _ := b.Pending()
		require.Equal(t, 1, n)
		require.NoError(t, b.Flush(context.Background()))
		require.Len(t, rec.successes(), 1)
		require.Equal(t, []int{1}, rec.successes()[0].Items)
	})

	t.Run("cancelled Close keeps items", func(t *testing.T) {
		rec := &recorder{}
		b := newBuilder(t, batch.BuilderConfig[int]{MaxCount: 10, MaxAge: time.Hour, Flush: rec.flush})
		require.NoError(t, b.Add(context.Background(), 1, 1))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		require.ErrorIs(t, b.Close(ctx), context.Canceled)
		require.ErrorIs(t, b.Add(context.Background(), 2, 1), batch.ErrClosed)
		n, _ := b.Pending()
		require.Equal(t, 1, n)
		require.Empty(t, rec.allCalls())
		require.NoError(t, b.Close(context.Background()))
		require.Equal(t, []int{1}, rec.successes()[0].Items)
	})

	t.Run("caller ctx reaches FlushFunc", func(t *testing.T) {
		var seen []any
		b := newBuilder(t, batch.BuilderConfig[int]{MaxCount: 2, MaxAge: time.Hour,
			Flush: func(ctx context.Context, c batch.Cut[int]) error {
				seen = append(seen, ctx.Value(ctxKey{}))
				return nil
			}})
		require.NoError(t, b.Add(context.WithValue(context.Background(), ctxKey{}, "add-1"), 1, 1))
		require.NoError(t, b.Add(context.WithValue(context.Background(), ctxKey{}, "add-2"), 2, 1))
		require.NoError(t, b.Add(context.Background(), 3, 1))
		require.NoError(t, b.Flush(context.WithValue(context.Background(), ctxKey{}, "flush")))
		require.NoError(t, b.Add(context.Background(), 4, 1))
		require.NoError(t, b.Close(context.WithValue(context.Background(), ctxKey{}, "close")))
		require.Equal(t, []any{"add-2", "flush", "close"}, seen)
	})

	t.Run("ctx ends while Add waits for another flush", func(t *testing.T) {
		entered := make(chan struct{})
		release := make(chan struct{})
		rec := &recorder{}
		rec.fail = func(c batch.Cut[int], _ int) error {
			if c.Seq == 1 {
				close(entered)
				<-release
			}
			return nil
		}
		b := newBuilder(t, batch.BuilderConfig[int]{MaxCount: 1, MaxAge: time.Hour, Flush: rec.flush})

		firstDone := make(chan error, 1)
		go func() { firstDone <- b.Add(context.Background(), 1, 1) }()
		<-entered

		ctx, cancel := context.WithCancel(context.Background())
		secondDone := make(chan error, 1)
		go func() { secondDone <- b.Add(ctx, 2, 1) }()
		require.Eventually(t, func() bool { n, _ := b.Pending(); return n == 2 }, waitTimeout, time.Millisecond)
		cancel()
		var err error
		select {
		case err = <-secondDone:
		case <-time.After(waitTimeout):
			t.Fatal("Add did not return after its ctx was cancelled")
		}
		requireFlushError(t, err, 2, context.Canceled) // accepted, not flushed
		close(release)
		require.NoError(t, <-firstDone)

		n, _ := b.Pending()
		require.Equal(t, 1, n, "the accepted item was lost")
		require.NoError(t, b.Flush(context.Background()))
		var items []int
		for _, c := range rec.successes() {
			items = append(items, c.Items...)
		}
		require.Equal(t, []int{1, 2}, items)
	})
}

func TestBuilderBackPressure(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	rec := &recorder{}
	rec.fail = func(c batch.Cut[int], _ int) error {
		if c.Seq == 1 {
			close(entered)
			<-release
		}
		return nil
	}
	b := newBuilder(t, batch.BuilderConfig[int]{MaxCount: 2, MaxAge: time.Hour, Flush: rec.flush})
	ctx := context.Background()

	require.NoError(t, b.Add(ctx, 1, 1))
	cutter := make(chan error, 1)
	go func() { cutter <- b.Add(ctx, 2, 1) }() // makes cut 1, whose flush blocks
	<-entered

	// An Add that makes no cut does not wait for the running flush.
	require.NoError(t, b.Add(ctx, 3, 1))
	// The Add that made the cut is still blocked in its flush.
	select {
	case err := <-cutter:
		t.Fatalf("Add returned (%v) while its flush was running", err)
	default:
	}
	close(release)
	select {
	case err := <-cutter:
		require.NoError(t, err)
	case <-time.After(waitTimeout):
		t.Fatal("Add did not return after its flush finished")
	}
	require.Equal(t, []int{1, 2}, rec.successes()[0].Items)
}

func TestBuilderConcurrentAdd(t *testing.T) {
	const (
		goroutines = 8
		perG       = 2000
		maxCount   = 37
		maxBytes   = 1000
	)
	boom := errors.New("injected")
	var (
		mu      sync.Mutex
		seen    = map[int]int{}
		lastSeq uint64
		calls   int
	)
	flush := func(_ context.Context, c batch.Cut[int]) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls%7 == 0 {
			return boom // a retryable failure every 7th call
		}
		if c.Seq != lastSeq+1 {
			return fmt.Errorf("cut %d flushed after cut %d", c.Seq, lastSeq)
		}
		if len(c.Items) == 0 || len(c.Items) > maxCount || c.Bytes > maxBytes {
			return fmt.Errorf("cut %d out of limits: %d items, %d bytes", c.Seq, len(c.Items), c.Bytes)
		}
		var sum int64
		for _, it := range c.Items {
			seen[it]++
			sum += size(it)
		}
		if sum != c.Bytes {
			return fmt.Errorf("cut %d: Bytes %d, sizes sum to %d", c.Seq, c.Bytes, sum)
		}
		lastSeq = c.Seq
		return nil
	}
	var (
		onErrMu  sync.Mutex
		unexpect []error
		rec      = &recorder{}
		wg       sync.WaitGroup
	)
	rec.fail = func(c batch.Cut[int], _ int) error { return flush(context.Background(), c) }
	check := func(err error) {
		if err == nil {
			return
		}
		var fe *batch.FlushError
		if errors.As(err, &fe) && errors.Is(err, boom) {
			return // accepted; retried later
		}
		onErrMu.Lock()
		unexpect = append(unexpect, err)
		onErrMu.Unlock()
	}
	b := newBuilder(t, batch.BuilderConfig[int]{
		MaxCount: maxCount, MaxBytes: maxBytes, MaxAge: 2 * time.Millisecond,
		Flush: rec.flush, OnError: check,
	})
	ctx := context.Background()
	for g := range goroutines {
		wg.Go(func() {
			for i := range perG {
				item := g*perG + i
				check(b.Add(ctx, item, size(item)))
			}
		})
	}
	wg.Wait()

	// Close until everything is flushed (injected failures hit Close too).
	var err error
	for range 100 {
		if err = b.Close(ctx); err == nil {
			break
		}
		require.ErrorIs(t, err, boom)
	}
	require.NoError(t, err)

	onErrMu.Lock()
	require.Empty(t, unexpect, "unexpected errors (out of order, out of limits, ...)")
	onErrMu.Unlock()
	require.False(t, rec.overlap.Load(), "FlushFunc calls overlapped")
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, seen, goroutines*perG, "items lost")
	for item, n := range seen {
		require.Equal(t, 1, n, "item %d delivered %d times", item, n)
	}
	n, bytes := b.Pending()
	require.Zero(t, n)
	require.Zero(t, bytes)
}

// size gives item its deterministic size, 1 to 100 bytes.
func size(item int) int64 { return int64(item*7919%100 + 1) }

func TestBuilderCloseCancelsRunningAgeFlushWhenGivingUp(t *testing.T) {
	for _, whileWaiting := range []bool{false, true} {
		t.Run(fmt.Sprintf("while waiting %v", whileWaiting), func(t *testing.T) {
			testCloseGivesUp(t, whileWaiting)
		})
	}
}

func testCloseGivesUp(t *testing.T, whileWaiting bool) {
	entered := make(chan struct{}, 10)
	var blockFirst atomic.Bool
	blockFirst.Store(true)
	rec := &recorder{}
	errs := make(chan error, 10)
	b := newBuilder(t, batch.BuilderConfig[int]{
		MaxCount: 100, MaxAge: time.Millisecond, OnError: func(err error) { errs <- err },
		Flush: func(ctx context.Context, c batch.Cut[int]) error {
			if blockFirst.CompareAndSwap(true, false) {
				entered <- struct{}{}
				<-ctx.Done() // a slow store that honours ctx
				return ctx.Err()
			}
			return rec.flush(ctx, c)
		},
	})
	require.NoError(t, b.Add(context.Background(), 1, 1))
	select {
	case <-entered:
	case <-time.After(waitTimeout):
		t.Fatal("age flush did not start")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if !whileWaiting {
		cancel()
	}
	closed := make(chan error, 1)
	go func() { closed <- b.Close(ctx) }()
	if whileWaiting {
		// Close has begun once Add says so; it then waits for the running
		// flush. A done ctx keeps the probe from adding anything.
		done, stop := context.WithCancel(context.Background())
		stop()
		require.Eventually(t, func() bool {
			return errors.Is(b.Add(done, 2, 1), batch.ErrClosed)
		}, waitTimeout, time.Millisecond)
		cancel()
	}
	select {
	case err := <-closed:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(waitTimeout):
		t.Fatal("Close did not return after its ctx ended")
	}
	// The running age flush was told to stop, and reported it.
	select {
	case err := <-errs:
		requireFlushError(t, err, 1, context.Canceled)
	case <-time.After(waitTimeout):
		t.Fatal("the age flush's ctx was not cancelled")
	}
	n, _ := b.Pending()
	require.Equal(t, 1, n)

	require.NoError(t, b.Close(context.Background()))
	got := rec.successes()
	require.Len(t, got, 1)
	require.Equal(t, uint64(1), got[0].Seq)
	require.Equal(t, []int{1}, got[0].Items)
	require.Equal(t, batch.ReasonAge, got[0].Reason)
}
