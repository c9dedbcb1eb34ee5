package queue

// BatchColumnsForBench exposes the claim's column list to the benchmarks,
// so the pgbench ceiling returns exactly what a claim returns.
const BatchColumnsForBench = batchColumns

// BinaryBatchRows exposes the fast-path check to the decoding test.
var BinaryBatchRows = binaryBatchRows

// ClaimStatements returns c's full claim and its claim from a floor.
func ClaimStatements(c *Client) (full, floored string) { return c.sql.claim, c.sql.claimFrom }

// PrunePause is prunePause, for its table test.
var PrunePause = prunePause

// HasEventSink reports whether c delivers events (Config.OnEvent is set).
func HasEventSink(c *Client) bool { return c.events != nil }

func ReclaimStatement(c *Client) string { return c.sql.reclaim }

// HeadStatements are the operators' statements that read an index from its
// head by design (listings, counts, every running lease).
func HeadStatements(c *Client) []string {
	return []string{c.sql.list, c.sql.stats, c.sql.listDead, c.sql.releaseOwner}
}

func SliceStatement(c *Client) string { return c.sql.claimSlice }
