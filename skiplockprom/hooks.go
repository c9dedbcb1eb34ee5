package skiplockprom

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/queue"
)

// Middleware is a queue.MiddlewareFunc that observes each handler call in
// skiplock_handler_duration_seconds, labelled with the batch's queue and
// the outcome: ok (nil error), error, or aborted (the handler panicked or
// called runtime.Goexit; the observation is made on the way out and the
// panic goes on to the runner). A handler the runner abandons is observed
// only if it returns.
func (m *Metrics) Middleware(next queue.HandlerFunc) queue.HandlerFunc {
	return func(ctx context.Context, b *batch.Batch) error {
		o := m.handlerObservers(b.Queue)
		start := time.Now()
		returned := false
		defer func() {
			if !returned {
				o.aborted.Observe(time.Since(start).Seconds())
			}
		}()
		err := next(ctx, b)
		returned = true
		if d := time.Since(start).Seconds(); err != nil {
			o.err.Observe(d)
		} else {
			o.ok.Observe(d)
		}
		return err
	}
}

// handlerObs are the handler-duration series of one queue.
type handlerObs struct{ ok, err, aborted prometheus.Observer }

// handlerObservers returns queue's series, looked up once per queue: a
// label lookup per call would cost more than the rest of the middleware.
func (m *Metrics) handlerObservers(queue string) *handlerObs {
	if o, ok := m.handlerByQueue.Load(queue); ok {
		return o.(*handlerObs)
	}
	o, _ := m.handlerByQueue.LoadOrStore(queue, &handlerObs{
		ok:      m.handler.WithLabelValues(queue, "ok"),
		err:     m.handler.WithLabelValues(queue, "error"),
		aborted: m.handler.WithLabelValues(queue, "aborted"),
	})
	return o.(*handlerObs)
}

// QueueEvents returns a queue.OnEventFunc, for queue.Config.OnEvent, that
// counts each event and then passes it to next (nil for none). The
// counting is quick and cannot block, so it goes first: a slow next
// delays the counting of later events only, and the queue package drops
// (and counts) events rather than wait for it.
func (m *Metrics) QueueEvents(next queue.OnEventFunc) queue.OnEventFunc {
	return func(e queue.Event) {
		m.recordEvent(e)
		if next != nil {
			next(e)
		}
	}
}

func (m *Metrics) recordEvent(e queue.Event) {
	n := float64(e.Count)
	switch e.Kind {
	case queue.EventEnqueued:
		m.enqueued.WithLabelValues(e.Queue).Add(n)
	case queue.EventClaimed:
		m.claimed.WithLabelValues(e.Queue).Add(n)
	case queue.EventCompleted:
		m.completed.WithLabelValues(e.Queue).Add(n)
		obs := m.latency.WithLabelValues(e.Queue)
		for i := range e.Batches {
			if c := e.Batches[i].CreatedAt; !c.IsZero() {
				obs.Observe(max(e.At.Sub(c).Seconds(), 0))
			}
		}
	case queue.EventRetried:
		m.retried.WithLabelValues(e.Queue).Add(n)
	case queue.EventDeadLettered:
		m.dead.WithLabelValues(e.Queue).Add(n)
	case queue.EventReleased:
		m.released.WithLabelValues(e.Queue).Add(n)
	case queue.EventReclaimed:
		m.reclaimed.WithLabelValues(e.Queue).Add(n)
	case queue.EventLeaseExtended:
		m.extended.WithLabelValues(e.Queue).Add(n)
	case queue.EventLeaseLost:
		m.leaseLost.WithLabelValues(e.Queue).Add(n)
	case queue.EventReassertedEnqueues:
		m.reassertedEnqueues.Add(n)
	case queue.EventReassertedCompletions:
		m.reassertedCompletions.Add(n)
	}
}

// PoolEvents returns a failover.OnEventFunc, for failover.Config.OnEvent,
// that times the pool's stretches without a writer and then passes each
// event to next (nil for none). It never blocks. A stretch starts when
// the pool retires a stale writer (failover.EventStaleWriter) and ends
// when a new generation serves (failover.EventGenerationReady).
func (m *Metrics) PoolEvents(next failover.OnEventFunc) failover.OnEventFunc {
	m.mu.Lock()
	m.poolEvents = true
	m.mu.Unlock()
	return func(e failover.Event) {
		m.recordPoolEvent(e)
		if next != nil {
			next(e)
		}
	}
}

func (m *Metrics) recordPoolEvent(e failover.Event) {
	at := e.At
	if at.IsZero() {
		at = time.Now()
	}
	m.outageMu.Lock()
	defer m.outageMu.Unlock()
	switch e.Kind {
	case failover.EventStaleWriter:
		if m.outageSince.IsZero() {
			m.outageSince = at
		}
	case failover.EventGenerationReady:
		if !m.outageSince.IsZero() {
			m.outageTotal += max(at.Sub(m.outageSince), 0)
			m.outageSince = time.Time{}
		}
	}
}

// writerless is the time without a writer so far, the current stretch
// included.
func (m *Metrics) writerless(now time.Time) time.Duration {
	m.outageMu.Lock()
	defer m.outageMu.Unlock()
	d := m.outageTotal
	if !m.outageSince.IsZero() {
		d += max(now.Sub(m.outageSince), 0)
	}
	return d
}
