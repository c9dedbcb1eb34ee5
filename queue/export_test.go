package queue

// BatchColumnsForBench exposes the claim's column list to the benchmarks,
// so the pgbench ceiling returns exactly what a claim returns.
const BatchColumnsForBench = batchColumns

// BinaryBatchRows exposes the fast-path check to the decoding test.
var BinaryBatchRows = binaryBatchRows
