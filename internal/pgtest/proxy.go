package pgtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Proxy tuning.
const (
	proxyDialTimeout = 5 * time.Second
	proxyReadSize    = 32 << 10
	// proxyQueueLen bounds the chunks held per direction (while blackholed or delayed); a full
	// queue stops reading, which pushes back on the sender like a full TCP window.
	proxyQueueLen = 256
)

// Proxy is a TCP proxy on 127.0.0.1 that stands in for a cluster endpoint, a DNS name whose
// answer changes: each accepted connection is forwarded to the target of the moment. A test
// can switch the target, delay traffic, reset connections and blackhole them while traffic
// flows. All methods are safe for concurrent use.
type Proxy struct {
	ln   net.Listener
	port int

	mu        sync.Mutex
	target    string
	latency   time.Duration
	blackhole bool
	changed   chan struct{} // closed and replaced when latency or blackhole change
	conns     map[*proxyConn]struct{}
	closed    bool
	accepted  int64 // connections accepted since the proxy started

	wg        sync.WaitGroup // the accept loop and every connection's goroutines
	closeOnce sync.Once
	closeErr  error
}

// proxyConn is one proxied connection: the accepted client side and the dialed upstream side.
type proxyConn struct {
	p      *Proxy
	client net.Conn
	ctx    context.Context // done when the connection is closed
	cancel context.CancelFunc

	mu       sync.Mutex
	upstream net.Conn // nil until dialed
	closed   bool
}

// chunk is bytes read from one side, due to be written to the other.
type chunk struct {
	data []byte
	due  time.Time
	eof  bool // the sender finished sending: half-close the other side
}

// NewProxy starts a proxy listening on a free 127.0.0.1 port that forwards connections to
// target ("host:port"). Close it when done.
func NewProxy(target string) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("pgtest: new proxy: target %q: %w", target, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("pgtest: new proxy: %w", err)
	}
	p := &Proxy{
		ln:      ln,
		port:    ln.Addr().(*net.TCPAddr).Port,
		target:  target,
		changed: make(chan struct{}),
		conns:   make(map[*proxyConn]struct{}),
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the proxy's listening address, "127.0.0.1:<port>".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Host returns the proxy's listening host, "127.0.0.1".
func (p *Proxy) Host() string { return "127.0.0.1" }

// Port returns the proxy's listening port.
func (p *Proxy) Port() int { return p.port }

// ConnString returns a URL to connect to database as "postgres" through the proxy, in the
// format of Server.ConnString. An empty database means "postgres".
func (p *Proxy) ConnString(database string) string { return connString(p.Host(), p.port, database) }

// Target returns the address new connections are forwarded to.
func (p *Proxy) Target() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.target
}

// SetTarget makes new connections go to target ("host:port"); open connections stay with the
// server they were made to, as after a DNS change.
func (p *Proxy) SetTarget(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = target
}

// SetLatency delays every chunk of bytes by d in each direction, so a round trip takes 2d
// longer. Chunks are timestamped when read and written when due, so throughput is not limited
// to one chunk per d; order is kept. Chunks already read keep their delay. Zero (the default)
// turns the delay off.
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latency = max(d, 0)
	p.notifyLocked()
}

// Blackhole, while on, holds all bytes in both directions of every connection, old and new,
// without closing any connection: nothing is forwarded and nothing is dropped. New connections
// are still accepted (and dialed). Turned off, the held bytes flow again in order, like TCP
// after retransmission.
func (p *Proxy) Blackhole(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blackhole = on
	p.notifyLocked()
}

// notifyLocked wakes the writers waiting on a change of latency or blackhole.
func (p *Proxy) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// Accepted returns how many connections the proxy has accepted since it
// started, open or closed: a measure of how hard clients try to connect.
func (p *Proxy) Accepted() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Conns returns how many proxied connections are open.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// ResetAll closes every open proxied connection at once, client and upstream side, with a TCP
// reset: clients see "connection reset by peer" or EOF on their next read. New connections are
// still accepted. It returns how many connections it closed.
func (p *Proxy) ResetAll() int {
	n := 0
	for _, pc := range p.snapshot() {
		if pc.close(true) {
			n++
		}
	}
	return n
}

// Close stops listening, closes every proxied connection and waits for the proxy's goroutines
// to end. It is idempotent.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		if err := p.ln.Close(); err != nil {
			p.closeErr = fmt.Errorf("pgtest: close proxy %s: %w", p.Addr(), err)
		}
		for _, pc := range p.snapshot() {
			pc.close(false)
		}
		p.wg.Wait()
	})
	return p.closeErr
}

func (p *Proxy) snapshot() []*proxyConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := make([]*proxyConn, 0, len(p.conns))
	for pc := range p.conns {
		list = append(list, pc)
	}
	return list
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors or similar: wait a little instead of spinning.
			p.mu.Lock()
			closed := p.closed
			p.mu.Unlock()
			if closed {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		pc := &proxyConn{p: p, client: c, ctx: ctx, cancel: cancel}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			cancel()
			_ = c.Close()
			return
		}
		p.conns[pc] = struct{}{}
		p.accepted++
		p.wg.Add(1)
		p.mu.Unlock()
		go pc.serve()
	}
}

// serve dials the target of the moment and forwards both directions until both are done or
// the connection is closed.
func (pc *proxyConn) serve() {
	defer pc.p.wg.Done()
	defer pc.close(false)

	d := net.Dialer{Timeout: proxyDialTimeout}
	up, err := d.DialContext(pc.ctx, "tcp", pc.p.Target())
	if err != nil {
		return
	}
	pc.mu.Lock()
	if pc.closed {
		pc.mu.Unlock()
		_ = up.Close()
		return
	}
	pc.upstream = up
	pc.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pc.pipe(pc.client, up) }()
	go func() { defer wg.Done(); pc.pipe(up, pc.client) }()
	wg.Wait()
}

// pipe forwards src to dst: a reader goroutine timestamps chunks and queues them, and this
// goroutine writes each when it is due and the proxy is not blackholed.
func (pc *proxyConn) pipe(src, dst net.Conn) {
	queue := make(chan chunk, proxyQueueLen)
	pc.p.wg.Add(1)
	go func() {
		defer pc.p.wg.Done()
		pc.read(src, queue)
	}()
	for {
		var c chunk
		select {
		case c = <-queue:
		case <-pc.ctx.Done():
			return
		}
		if !pc.p.waitDue(c.due, pc.ctx.Done()) {
			return
		}
		if c.eof {
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			return
		}
		if _, err := dst.Write(c.data); err != nil {
			pc.close(false)
			return
		}
	}
}

// read reads src into queue until EOF (queued as a chunk, so it is held like data) or an error
// (which closes the whole connection, as a reset would).
func (pc *proxyConn) read(src net.Conn, queue chan<- chunk) {
	buf := make([]byte, proxyReadSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			c := chunk{data: append([]byte(nil), buf[:n]...), due: pc.p.dueTime()}
			select {
			case queue <- c:
			case <-pc.ctx.Done():
				return
			}
		}
		if errors.Is(err, io.EOF) {
			select {
			case queue <- chunk{eof: true, due: pc.p.dueTime()}:
			case <-pc.ctx.Done():
			}
			return
		}
		if err != nil {
			pc.close(false)
			return
		}
	}
}

// dueTime is when a chunk read now must be written.
func (p *Proxy) dueTime() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Now().Add(p.latency)
}

// waitDue blocks until due has passed and the proxy is not blackholed; false if done closed first.
func (p *Proxy) waitDue(due time.Time, done <-chan struct{}) bool {
	for {
		p.mu.Lock()
		blackhole, changed := p.blackhole, p.changed
		p.mu.Unlock()
		if blackhole {
			select {
			case <-changed:
				continue
			case <-done:
				return false
			}
		}
		wait := time.Until(due)
		if wait <= 0 {
			return true
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-changed:
			timer.Stop()
		case <-done:
			timer.Stop()
			return false
		}
	}
}

// close closes both sides of the connection, with a TCP reset if reset is set, and forgets it.
// It reports whether this call closed it.
func (pc *proxyConn) close(reset bool) bool {
	pc.mu.Lock()
	if pc.closed {
		pc.mu.Unlock()
		return false
	}
	pc.closed = true
	up := pc.upstream
	pc.mu.Unlock()

	pc.cancel()
	for _, c := range []net.Conn{pc.client, up} {
		if c == nil {
			continue
		}
		if tc, ok := c.(*net.TCPConn); ok && reset {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
	pc.p.mu.Lock()
	delete(pc.p.conns, pc)
	pc.p.mu.Unlock()
	return true
}
