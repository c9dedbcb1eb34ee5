package queue_test

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
	"github.com/skiplock/skiplock/skiplockprom"
)

// BenchmarkHooksOverhead measures what the hooks cost on the claim-100 +
// complete cycle (4 runners, as BenchmarkClaimComplete's claim=100/workers=4):
// each op drains claimWork(100) batches once per variant on the same
// server, the variants in rotating order — none: no hooks; middleware: a
// skiplockprom Metrics' Middleware only; events: its OnEvent only; all:
// both, with the client and the runners added to the collector and a
// gather every second. It reports each variant's median batches/s over
// the ops and the median of the per-op ratios to none. Run it with
// -benchtime 5x or more:
//
//	go test ./queue -run '^$' -bench HooksOverhead -benchtime 5x
func BenchmarkHooksOverhead(b *testing.B) {
	e := newBenchEnv(b)
	m, err := skiplockprom.New(nil)
	require.NoError(b, err)
	hooked := newClient(b, e.pool, e.schema, &queue.Config{OnEvent: m.QueueEvents(nil)})
	m.SetClient(hooked)
	reg := prometheus.NewRegistry()
	require.NoError(b, reg.Register(m))
	const size, workers = 100, 4
	n := claimWork(size)
	mws := []queue.MiddlewareFunc{m.Middleware}
	variants := []struct {
		name   string
		client *queue.Client
		mws    []queue.MiddlewareFunc
		add    func(*queue.Runner)
		gather bool
	}{
		{"none", e.client, nil, nil, false},
		{"middleware", e.client, mws, nil, false},
		{"events", hooked, nil, nil, false},
		{"all", hooked, mws, m.AddRunner, true},
	}
	rates := make([][]float64, len(variants))
	ratios := make([][]float64, len(variants))
	for i := 0; i < b.N; i++ {
		got := make([]float64, len(variants))
		for k := range variants {
			v := &variants[(i+k)%len(variants)]
			e.prefill("bench", n)
			stop, gathered := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(gathered)
				if !v.gather {
					return
				}
				t := time.NewTicker(time.Second)
				defer t.Stop()
				for {
					select {
					case <-stop:
						return
					case <-t.C:
						_, _ = reg.Gather()
					}
				}
			}()
			d := drainClient(b, v.client, n, size, workers, v.mws, v.add)
			close(stop)
			<-gathered
			got[(i+k)%len(variants)] = float64(n) / d.Seconds()
		}
		for k := range variants {
			rates[k] = append(rates[k], got[k])
			ratios[k] = append(ratios[k], got[k]/got[0])
		}
	}
	for k, v := range variants {
		b.ReportMetric(median(rates[k]), v.name+"-batches/s")
		if k > 0 {
			b.ReportMetric(median(ratios[k]), v.name+"/none")
		}
		b.Logf("%-10s batches/s:%s  ratio to none:%s", v.name, fmtRates(rates[k], "%.0f"), fmtRates(ratios[k], "%.3f"))
	}
	b.ReportMetric(0, "ns/op")
	b.Logf("events dropped: %d", hooked.EventStats().Dropped)
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fmtRates(xs []float64, format string) string {
	out := ""
	for _, x := range xs {
		out += " " + fmt.Sprintf(format, x)
	}
	return out
}

// drainClient is drain on a given client, with middleware and a hook that
// sees each runner before it starts.
func drainClient(b *testing.B, c *queue.Client, n, size, workers int, mws []queue.MiddlewareFunc, add func(*queue.Runner)) time.Duration {
	var handled atomic.Int64
	done := make(chan struct{})
	runners := make([]*queue.Runner, workers)
	for w := range runners {
		r, err := queue.NewRunner(c, &queue.RunnerConfig{
			Queue: "bench", Concurrency: 2 * size, ClaimSize: size, PollInterval: 100 * time.Millisecond,
			Middleware: mws,
			Handler: func(ctx context.Context, bt *batch.Batch) error {
				if handled.Add(1) == int64(n) {
					close(done)
				}
				return nil
			},
		})
		require.NoError(b, err)
		if add != nil {
			add(r)
		}
		runners[w] = r
	}
	t0 := time.Now()
	for _, r := range runners {
		require.NoError(b, r.Start(context.Background()))
	}
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatalf("drained only %d of %d", handled.Load(), n)
	}
	var completed int64
	for _, r := range runners {
		require.NoError(b, r.Stop(context.Background()))
		completed += r.Stats().Completed
	}
	elapsed := time.Since(t0)
	require.EqualValues(b, n, completed)
	return elapsed
}
