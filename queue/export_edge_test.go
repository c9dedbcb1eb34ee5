package queue

import "context"

// CheckTablesForTest exposes the start-up check of a runner.
func (c *Client) CheckTablesForTest(ctx context.Context) error { return c.checkTables(ctx) }

// ChannelNameForTest exposes the NOTIFY channel of a schema.
var ChannelNameForTest = channelName
