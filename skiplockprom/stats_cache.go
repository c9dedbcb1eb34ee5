package skiplockprom

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/skiplock/skiplock/queue"
)

// queueStats returns the depth and age figures of every queue, from one
// Client.Stats query per StatsInterval at most: scrapes in between, and
// scrapes that arrive while the query runs, get the cached figures. A
// failed query keeps the previous figures and still waits out the
// interval, so a database in trouble is not asked again at every scrape.
func (m *Metrics) queueStats(c *queue.Client) []queue.QueueStats {
	m.statsMu.Lock()
	defer m.statsMu.Unlock()
	now := time.Now()
	if !m.statsAt.IsZero() && now.Sub(m.statsAt) < m.cfg.StatsInterval {
		return m.stats
	}
	m.statsAt = now
	m.statsQueries.Inc()
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.StatsTimeout)
	defer cancel()
	st, err := c.Stats(ctx, "")
	if err != nil {
		m.statsErrors.Inc()
		m.log.Warn("queue stats query failed; reporting the previous figures", zap.Error(err))
		return m.stats
	}
	m.stats = st
	return st
}
