package failover

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
)

// Defaults of Config.
const (
	ProbeIntervalDefault  = time.Second
	ProbeTimeoutDefault   = 2 * time.Second
	ConnectTimeoutDefault = 2 * time.Second
	DrainTimeoutDefault   = 5 * time.Second
	WriterWaitDefault     = 5 * time.Second
	RebuildBackoffDefault = 100 * time.Millisecond
	KeepAliveDefault      = 5 * time.Second
)

// OnEventFunc receives the pool's events. It is called from the pool's own
// goroutines, one event at a time, and must not block.
type OnEventFunc func(Event)

// Config configures a Pool.
type Config struct {
	// PoolConfig is the pgx pool configuration, from pgxpool.ParseConfig
	// (a zero pgxpool.Config has no ConnConfig and is refused). Required.
	// It is copied for every generation of the pool; its hooks still run,
	// before the pool's own role check. BeforeConnect (for example one
	// that sets an RDS IAM token or a rotated password) runs before every
	// connection the Pool opens: pooled ones, probes and ConnectListener's.
	// AfterConnect runs on pooled connections and on ConnectListener's,
	// not on probes (which only ask the server's role and close).
	// PrepareConn/BeforeAcquire run on checkouts as usual.
	PoolConfig *pgxpool.Config

	// Logger receives the pool's logs, named "failover". Defaults to
	// zap.NewNop().
	Logger *zap.Logger

	// OnEvent, if set, receives every state change (see EventKind).
	OnEvent OnEventFunc

	// ProbeInterval is how often a fresh connection to the endpoint checks
	// who the writer is. It bounds how long writes can go to an old writer
	// that still accepts them (split brain). Operations that fail with a
	// connection error, a shutdown or an i/o timeout also ask for a probe
	// at once, but such kicked probes are at most one per ProbeInterval/4
	// (at least 50ms apart); an operation's own context ending asks for
	// none. Defaults to ProbeIntervalDefault.
	ProbeInterval time.Duration

	// ProbeTimeout bounds one probe: connect plus role check. Defaults to
	// ProbeTimeoutDefault.
	ProbeTimeout time.Duration

	// ConnectTimeout bounds each new connection when PoolConfig does not
	// set one. Defaults to ConnectTimeoutDefault.
	ConnectTimeout time.Duration

	// KeepAlive is the TCP keep-alive period of connections when
	// PoolConfig does not set its own dialer. Defaults to KeepAliveDefault.
	KeepAlive time.Duration

	// DrainTimeout is how long a retired generation's in-flight work may
	// take before the pool logs that it is still waiting for it. Defaults
	// to DrainTimeoutDefault.
	DrainTimeout time.Duration

	// WriterWait is how long an operation waits for a verified writer while
	// the pool is rebuilding, before it fails with *NoWriterError (the
	// caller's context may end it sooner). Defaults to WriterWaitDefault.
	WriterWait time.Duration

	// RebuildBackoff caps the delay between probes while rebuilding: the
	// first probe goes out at once, the next ones after a tenth of it,
	// doubling up to RebuildBackoff (jitter never exceeds it). So a writer
	// that becomes reachable is used within about RebuildBackoff plus one
	// probe, and a rebuild opens at most about one connection per
	// RebuildBackoff (10 per second by default) while no writer answers.
	// Defaults to RebuildBackoffDefault.
	RebuildBackoff time.Duration
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c *Config) WithDefaults() *Config {
	out := Config{}
	if c != nil {
		out = *c
	}
	if out.Logger == nil {
		out.Logger = zap.NewNop()
	}
	if out.ProbeInterval == 0 {
		out.ProbeInterval = ProbeIntervalDefault
	}
	if out.ProbeTimeout == 0 {
		out.ProbeTimeout = ProbeTimeoutDefault
	}
	if out.ConnectTimeout == 0 {
		out.ConnectTimeout = ConnectTimeoutDefault
	}
	if out.KeepAlive == 0 {
		out.KeepAlive = KeepAliveDefault
	}
	if out.DrainTimeout == 0 {
		out.DrainTimeout = DrainTimeoutDefault
	}
	if out.WriterWait == 0 {
		out.WriterWait = WriterWaitDefault
	}
	if out.RebuildBackoff == 0 {
		out.RebuildBackoff = RebuildBackoffDefault
	}
	return &out
}

// ErrInvalidConfig is matched by configuration errors of New.
var ErrInvalidConfig = errors.New("failover: invalid config")

func (c *Config) validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...))
	}
	switch {
	case c.PoolConfig == nil:
		return bad("PoolConfig", "nil (use pgxpool.ParseConfig)")
	case c.PoolConfig.ConnConfig == nil:
		return bad("PoolConfig.ConnConfig", "nil (use pgxpool.ParseConfig, not a zero pgxpool.Config)")
	case c.ProbeInterval < 10*time.Millisecond:
		return bad("ProbeInterval", "%s is below 10ms", c.ProbeInterval)
	case c.ProbeTimeout < 10*time.Millisecond:
		return bad("ProbeTimeout", "%s is below 10ms", c.ProbeTimeout)
	case c.ConnectTimeout < 10*time.Millisecond:
		return bad("ConnectTimeout", "%s is below 10ms", c.ConnectTimeout)
	case c.KeepAlive < 0:
		return bad("KeepAlive", "negative")
	case c.DrainTimeout <= 0:
		return bad("DrainTimeout", "%s is not positive", c.DrainTimeout)
	case c.WriterWait <= 0:
		return bad("WriterWait", "%s is not positive", c.WriterWait)
	case c.RebuildBackoff < 10*time.Millisecond:
		return bad("RebuildBackoff", "%s is below 10ms", c.RebuildBackoff)
	}
	return nil
}
