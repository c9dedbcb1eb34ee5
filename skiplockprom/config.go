package skiplockprom

import (
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Defaults of Config.
const (
	StatsIntervalDefault = 15 * time.Second
	StatsTimeoutDefault  = 5 * time.Second
)

// Default histogram buckets, in seconds.
var (
	// HandlerBucketsDefault spans 1 ms to about 9 minutes.
	HandlerBucketsDefault = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 540}
	// LatencyBucketsDefault spans 5 ms to 6 hours.
	LatencyBucketsDefault = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 10800, 21600}
)

// Config configures Metrics. A nil *Config means all defaults.
type Config struct {
	// StatsInterval is how long the queue depth and oldest-age figures of
	// one Client.Stats query are reused: scrapes within it are answered
	// from the cache, so the process runs at most one such query (for all
	// queues at once) per interval, however often and by however many
	// scrapers it is scraped. Defaults to StatsIntervalDefault.
	StatsInterval time.Duration

	// StatsTimeout bounds that query, retries included; on timeout or
	// error the scrape reports the previous figures (and counts the error
	// in skiplock_queue_stats_errors_total). Defaults to
	// StatsTimeoutDefault.
	StatsTimeout time.Duration

	// HandlerBuckets are the buckets of skiplock_handler_duration_seconds.
	// Defaults to HandlerBucketsDefault.
	HandlerBuckets []float64

	// LatencyBuckets are the buckets of
	// skiplock_batch_completion_latency_seconds. Defaults to
	// LatencyBucketsDefault.
	LatencyBuckets []float64

	// Logger receives the package's few logs (a failed Stats query), named
	// "skiplockprom". Defaults to zap.NewNop().
	Logger *zap.Logger
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c *Config) WithDefaults() *Config {
	out := Config{}
	if c != nil {
		out = *c
	}
	if out.StatsInterval == 0 {
		out.StatsInterval = StatsIntervalDefault
	}
	if out.StatsTimeout == 0 {
		out.StatsTimeout = StatsTimeoutDefault
	}
	if out.HandlerBuckets == nil {
		out.HandlerBuckets = HandlerBucketsDefault
	}
	if out.LatencyBuckets == nil {
		out.LatencyBuckets = LatencyBucketsDefault
	}
	if out.Logger == nil {
		out.Logger = zap.NewNop()
	}
	return &out
}

// ConfigError names the Config field New refused.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("skiplockprom config: %s: %s", e.Field, e.Reason)
}

func (c *Config) validate() error {
	switch {
	case c.StatsInterval < 0:
		return &ConfigError{Field: "StatsInterval", Reason: "negative"}
	case c.StatsTimeout <= 0:
		return &ConfigError{Field: "StatsTimeout", Reason: "not positive"}
	}
	for name, bs := range map[string][]float64{"HandlerBuckets": c.HandlerBuckets, "LatencyBuckets": c.LatencyBuckets} {
		for i := 1; i < len(bs); i++ {
			if !(bs[i] > bs[i-1]) {
				return &ConfigError{Field: name, Reason: "not strictly increasing"}
			}
		}
	}
	return nil
}
