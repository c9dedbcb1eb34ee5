package queue

import (
	"encoding/binary"
	"errors"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/skiplock/skiplock/batch"
)

// Claims return many rows of batchColumns per round trip, so reading them
// is on the hot path. When the server sends them in binary (the normal case
// with pgx's extended protocol), decodeBatch reads the raw values directly;
// otherwise, or for values it does not handle, rows are read with Scan.

// batchColumnOIDs are the types of batchColumns, in order.
var batchColumnOIDs = [...]uint32{
	20, 25, 25, 21, 23, 23, 1184, 1184, // id, queue, state, priority, attempt, max_attempts, run_at, created_at
	20, 25, 1184, // lease token, owner, expiry
	25, 25, 25, // idempotency key, partition key, uri
	25, 23, 20, // source topic, partition, start
	20, 20, 20, 17, 25, // source end, event count, byte size, payload, last error
}

const textOID = 25

var errSlowPath = errors.New("value needs the general scan")

// binaryBatchRows reports whether rows carry batchColumns in binary format.
func binaryBatchRows(rows pgx.Rows) bool {
	fds := rows.FieldDescriptions()
	if len(fds) != len(batchColumnOIDs) {
		return false
	}
	for i, fd := range fds {
		if fd.DataTypeOID != batchColumnOIDs[i] {
			return false
		}
		// text is the same in both formats; pgx asks for it as text.
		if fd.Format != pgx.BinaryFormatCode && fd.DataTypeOID != textOID {
			return false
		}
	}
	return true
}

// postgresEpoch is 2000-01-01 UTC in Unix microseconds.
const postgresEpoch = 946684800 * 1000000

func decodeBatch(v [][]byte, b *batch.Batch, queueHint string) error {
	var err error
	i8 := func(x []byte) int64 {
		if len(x) != 8 {
			err = errSlowPath
			return 0
		}
		return int64(binary.BigEndian.Uint64(x))
	}
	i4 := func(x []byte) int32 {
		if len(x) != 4 {
			err = errSlowPath
			return 0
		}
		return int32(binary.BigEndian.Uint32(x))
	}
	ts := func(x []byte) time.Time {
		us := i8(x)
		if us == math.MaxInt64 || us == math.MinInt64 { // ±infinity
			err = errSlowPath
			return time.Time{}
		}
		us += postgresEpoch
		return time.Unix(us/1000000, (us%1000000)*1000)
	}
	text := func(x []byte) string {
		if x == nil {
			err = errSlowPath
			return ""
		}
		return string(x)
	}

	b.ID = i8(v[0])
	if string(v[1]) == queueHint { // no allocation for the common case
		b.Queue = queueHint
	} else {
		b.Queue = text(v[1])
	}
	switch string(v[2]) {
	case string(batch.StateRunning):
		b.State = batch.StateRunning
	default:
		b.State = batch.State(text(v[2]))
	}
	if len(v[3]) != 2 {
		return errSlowPath
	}
	b.Priority = int16(binary.BigEndian.Uint16(v[3]))
	b.Attempt = int(i4(v[4]))
	b.MaxAttempts = int(i4(v[5]))
	b.RunAt = ts(v[6])
	b.CreatedAt = ts(v[7])
	b.Lease.Token = i8(v[8])
	b.Lease.Owner = text(v[9])
	b.Lease.ExpiresAt = time.Time{}
	if v[10] != nil {
		b.Lease.ExpiresAt = ts(v[10])
	}
	b.IdempotencyKey = text(v[11])
	b.PartitionKey = text(v[12])
	b.URI = text(v[13])
	b.Source.Topic = text(v[14])
	b.Source.Partition = i4(v[15])
	b.Source.Start = i8(v[16])
	b.Source.End = i8(v[17])
	b.EventCount = i8(v[18])
	b.ByteSize = i8(v[19])
	b.Payload = nil
	if v[20] != nil {
		b.Payload = append([]byte{}, v[20]...)
	}
	b.LastError = text(v[21])
	return err
}

// collectBatches reads rows of batchColumns. queueHint, when the rows are
// known to belong to one queue, saves an allocation per row.
func collectBatches(rows pgx.Rows, capacity int, queueHint string) ([]batch.Batch, error) {
	defer rows.Close()
	out := make([]batch.Batch, 0, capacity)
	fast := binaryBatchRows(rows)
	for rows.Next() {
		out = append(out, batch.Batch{})
		b := &out[len(out)-1]
		if fast {
			if err := decodeBatch(rows.RawValues(), b, queueHint); err == nil {
				continue
			}
			*b = batch.Batch{}
		}
		if err := scanBatch(rows, b); err != nil {
			return nil, err
		}
	}
	return out, rows.Err()
}
