package queue

import (
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// eventSink delivers events to an untrusted callback (Config.OnEvent)
// without ever making the emitter wait: emit puts the event in a bounded
// buffer, or drops and counts it when the buffer is full; one goroutine
// calls the callback. A callback that panics or calls runtime.Goexit ends
// that goroutine, which is replaced; one that blocks forever only makes
// further events drop. Close waits for the callback a bounded time only.
type eventSink struct {
	fn   OnEventFunc
	log  *zap.Logger
	ch   chan Event
	quit chan struct{}
	done chan struct{} // closed when the delivering goroutine has exited

	delivered, dropped, panics atomic.Int64
}

// eventCloseWait bounds how long Client.Close waits for the callback to
// take the buffered events.
const eventCloseWait = 250 * time.Millisecond

// newEventSink starts delivering to fn; nil fn means no sink (nil).
func newEventSink(fn OnEventFunc, buffer int, log *zap.Logger) *eventSink {
	if fn == nil {
		return nil
	}
	s := &eventSink{
		fn:   fn,
		log:  log,
		ch:   make(chan Event, buffer),
		quit: make(chan struct{}),
		done: make(chan struct{}),
	}
	go s.deliver()
	return s
}

// emit hands e to the callback's goroutine; it never blocks. A nil sink
// drops e (callers check for nil first, to build no event at all).
func (s *eventSink) emit(e Event) {
	if s == nil {
		return
	}
	e.At = time.Now()
	select {
	case s.ch <- e:
	default:
		s.dropped.Add(1)
	}
}

// deliver calls the callback for each event until close. If the callback
// panics or calls runtime.Goexit, the deferred function starts a
// replacement goroutine (a Goexit cannot be stopped, only outlived).
func (s *eventSink) deliver() {
	finished := false
	defer func() {
		if finished {
			close(s.done)
			return
		}
		p := recover()
		s.panics.Add(1)
		if p != nil {
			s.log.Error("OnEvent callback panicked; the event is dropped", zap.String("panic", panicText(p)))
		} else {
			s.log.Error("OnEvent callback called runtime.Goexit; the event is dropped")
		}
		go s.deliver()
	}()
	for {
		select {
		case e := <-s.ch:
			s.fn(e)
			s.delivered.Add(1)
		case <-s.quit:
			// Deliver what is buffered already, then stop.
			for {
				select {
				case e := <-s.ch:
					s.fn(e)
					s.delivered.Add(1)
				default:
					finished = true
					return
				}
			}
		}
	}
}

// close stops delivery after the buffered events, waiting at most
// eventCloseWait for the callback: a blocked callback keeps its goroutine,
// which ends once the callback returns.
func (s *eventSink) close() {
	if s == nil {
		return
	}
	close(s.quit)
	t := time.NewTimer(eventCloseWait)
	defer t.Stop()
	select {
	case <-s.done:
	case <-t.C:
		s.log.Warn("OnEvent callback did not return in time at Close; leaving it running")
	}
}

// stats returns the sink's counters (zero for a nil sink).
func (s *eventSink) stats() EventStats {
	if s == nil {
		return EventStats{}
	}
	return EventStats{Delivered: s.delivered.Load(), Dropped: s.dropped.Load(), Panics: s.panics.Load()}
}
