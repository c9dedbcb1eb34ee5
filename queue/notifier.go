package queue

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgxlisten"
	"go.uber.org/zap"
)

// ListenConnector is implemented by a DB that can open a dedicated
// connection for LISTEN, such as the failover package's pool (which opens it
// to the verified writer). For a DB without it, a *pgxpool.Pool's own
// configuration is used; a DB with neither gets no wake-ups, only polling.
type ListenConnector interface {
	ConnectListener(ctx context.Context) (*pgx.Conn, error)
}

// listenReconnectDelay replaces pgxlisten's default of one minute: after a
// failover the listener should be back within about a second.
const listenReconnectDelay = 500 * time.Millisecond

// notifier holds one LISTEN connection per Client and fans notifications
// out to the runners of each queue.
type notifier struct {
	log     *zap.Logger
	connect func(ctx context.Context) (*pgx.Conn, error)
	channel string

	mu      sync.Mutex
	subs    map[string]map[chan struct{}]struct{}
	ready   chan struct{} // closed once LISTEN is in place the first time
	isReady bool
	cancel  context.CancelFunc
	done    chan struct{}
}

// listenConnect returns how to open a LISTEN connection for db, or nil.
func listenConnect(db DB) func(ctx context.Context) (*pgx.Conn, error) {
	switch d := db.(type) {
	case ListenConnector:
		return d.ConnectListener
	case interface{ Config() *pgxpool.Config }:
		return poolListenConnect(d.Config())
	}
	return nil
}

// poolListenConnect opens a connection as pgxpool would for cfg: on a copy
// of its ConnConfig, with its BeforeConnect run first (a rotated password
// or an IAM token) and its AfterConnect after.
func poolListenConnect(cfg *pgxpool.Config) func(ctx context.Context) (*pgx.Conn, error) {
	return func(ctx context.Context) (*pgx.Conn, error) {
		cc := cfg.ConnConfig.Copy()
		if cfg.BeforeConnect != nil {
			if err := cfg.BeforeConnect(ctx, cc); err != nil {
				return nil, fmt.Errorf("listen: BeforeConnect: %w", err)
			}
		}
		conn, err := pgx.ConnectConfig(ctx, cc)
		if err != nil {
			return nil, err
		}
		if cfg.AfterConnect != nil {
			if err := cfg.AfterConnect(ctx, conn); err != nil {
				_ = conn.Close(context.WithoutCancel(ctx))
				return nil, fmt.Errorf("listen: AfterConnect: %w", err)
			}
		}
		return conn, nil
	}
}

// subscribe returns a channel that receives a value (coalesced) whenever
// queue may have new runnable batches, a channel closed once the listener
// is in place, and a function that ends the subscription. With wake-ups
// disabled or unavailable both channels are nil.
func (c *Client) subscribe(queue string) (wake <-chan struct{}, ready <-chan struct{}, unsubscribe func()) {
	if c.cfg.DisableNotify {
		return nil, nil, func() {}
	}
	c.notifyMu.Lock()
	defer c.notifyMu.Unlock()
	if c.notifier == nil {
		connect := listenConnect(c.db)
		if connect == nil {
			c.log.Info("no LISTEN connection available for this DB; runners poll only")
			return nil, nil, func() {}
		}
		watcher, _ := c.db.(WriterWatcher)
		c.notifier = startNotifier(c.log.Named("listen"), connect, c.sql.channel, watcher)
	}
	return c.notifier.subscribe(queue)
}

func startNotifier(log *zap.Logger, connect func(context.Context) (*pgx.Conn, error), channel string, watcher WriterWatcher) *notifier {
	ctx, cancel := context.WithCancel(context.Background())
	n := &notifier{
		log:     log,
		connect: connect,
		channel: channel,
		subs:    map[string]map[chan struct{}]struct{}{},
		ready:   make(chan struct{}),
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	l := &pgxlisten.Listener{
		Connect:        connect,
		ReconnectDelay: listenReconnectDelay,
		LogError: func(ctx context.Context, err error) {
			if ctx.Err() == nil {
				log.Warn("listener error; reconnecting", zap.Error(err))
			}
		},
	}
	l.Handle(channel, n)
	go func() {
		defer close(n.done)
		n.listen(ctx, l, watcher)
	}()
	return n
}

// listen runs the listener until ctx ends. With a watcher, a writer change
// restarts it, so the LISTEN connection follows the writer even when the
// old one keeps the connection open.
func (n *notifier) listen(ctx context.Context, l *pgxlisten.Listener, watcher WriterWatcher) {
	if watcher == nil {
		_ = l.Listen(ctx) // returns only when ctx is cancelled
		return
	}
	for ctx.Err() == nil {
		changed := watcher.WriterChanged()
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = l.Listen(lctx)
		}()
		select {
		case <-ctx.Done():
		case <-changed:
			n.log.Info("writer changed; reconnecting the listener")
		}
		cancel()
		<-done
	}
}

func (n *notifier) subscribe(queue string) (<-chan struct{}, <-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.subs[queue] == nil {
		n.subs[queue] = map[chan struct{}]struct{}{}
	}
	n.subs[queue][ch] = struct{}{}
	return ch, n.ready, func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		delete(n.subs[queue], ch)
		if len(n.subs[queue]) == 0 {
			delete(n.subs, queue)
		}
	}
}

// HandleNotification wakes the runners of the queue named by the payload.
func (n *notifier) HandleNotification(_ context.Context, nt *pgconn.Notification, _ *pgx.Conn) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for ch := range n.subs[nt.Payload] {
		wakeUp(ch)
	}
	return nil
}

// HandleBacklog runs after every (re)connect, once LISTEN is in place:
// notifications sent while disconnected are gone, so every runner is woken
// to look for itself.
func (n *notifier) HandleBacklog(context.Context, string, *pgx.Conn) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.isReady {
		n.isReady = true
		close(n.ready)
	} else {
		n.log.Info("listener reconnected")
	}
	for _, subs := range n.subs {
		for ch := range subs {
			wakeUp(ch)
		}
	}
	return nil
}

func (n *notifier) stop() {
	n.cancel()
	<-n.done
}

// wakeUp sends a coalesced wake-up: if one is already pending, it is enough.
func wakeUp(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// wakeCoalescer sends the NOTIFY wake-ups of enqueues made outside a
// caller's transaction, after they committed: at once for a queue not woken
// within the last interval, otherwise once at the end of the interval for
// all the enqueues that came meanwhile (Config.NotifyInterval).
type wakeCoalescer struct {
	interval time.Duration
	send     func(queues []string)

	mu      sync.Mutex
	last    map[string]time.Time // when each queue was last woken
	pending map[string]bool      // queues to wake when the timer fires
	timer   *time.Timer
	closed  bool
	fired   sync.WaitGroup // a timer callback that may be running
}

func newWakeCoalescer(interval time.Duration, send func(queues []string)) *wakeCoalescer {
	return &wakeCoalescer{interval: interval, send: send, last: map[string]time.Time{}, pending: map[string]bool{}}
}

// wake wakes the runners of queues: it sends the wake-up for those not
// woken within the interval before returning, and leaves the others to the
// timer. It blocks only for that one statement.
func (w *wakeCoalescer) wake(queues []string) {
	now := time.Now()
	var due []string
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	for _, q := range queues {
		if t, ok := w.last[q]; ok && now.Sub(t) < w.interval {
			w.pending[q] = true
			continue
		}
		w.last[q] = now
		due = append(due, q)
	}
	if len(w.pending) > 0 && w.timer == nil {
		w.fired.Add(1)
		w.timer = time.AfterFunc(w.interval, w.fire)
	}
	if len(w.last) > 4096 { // forget queues not woken lately
		for q, t := range w.last {
			if now.Sub(t) >= w.interval {
				delete(w.last, q)
			}
		}
	}
	w.mu.Unlock()
	if len(due) > 0 {
		w.send(due)
	}
}

// fire sends the coalesced wake-ups.
func (w *wakeCoalescer) fire() {
	defer w.fired.Done()
	w.mu.Lock()
	w.timer = nil
	due := w.takePendingLocked(time.Now())
	w.mu.Unlock()
	if len(due) > 0 {
		w.send(due)
	}
}

func (w *wakeCoalescer) takePendingLocked(now time.Time) []string {
	due := make([]string, 0, len(w.pending))
	for q := range w.pending {
		due = append(due, q)
		w.last[q] = now
	}
	clear(w.pending)
	return due
}

// close sends what is pending and stops the timer; later wakes do nothing.
func (w *wakeCoalescer) close() {
	w.mu.Lock()
	w.closed = true
	var due []string
	if w.timer != nil && w.timer.Stop() {
		w.timer = nil
		w.fired.Done()
		due = w.takePendingLocked(time.Now())
	}
	w.mu.Unlock()
	if len(due) > 0 {
		w.send(due)
	}
	w.fired.Wait()
}
