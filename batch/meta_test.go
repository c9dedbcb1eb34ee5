package batch_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
)

func TestMetaValidate(t *testing.T) {
	src := batch.Source{Topic: "orders", Partition: 1, Start: 10, End: 20}
	bigPayload := []byte(strings.Repeat("P", batch.MaxPayloadBytes+1))
	tests := []struct {
		name      string
		meta      *batch.Meta
		wantField string // "" for valid
		wantErr   string // substring of the reason
	}{
		{"uri only", &batch.Meta{URI: "s3://bucket/key"}, "", ""},
		{"source only", &batch.Meta{Source: src}, "", ""},
		{"everything", &batch.Meta{PartitionKey: "tenant-1", URI: "s3://b/k", Source: src, EventCount: 1000, ByteSize: 1 << 20, Payload: []byte(`{"schema":3}`)}, "", ""},
		{"limits exactly", &batch.Meta{
			PartitionKey: strings.Repeat("p", batch.MaxPartitionKeyBytes),
			URI:          strings.Repeat("u", batch.MaxURIBytes),
			Payload:      make([]byte, batch.MaxPayloadBytes),
		}, "", ""},
		{"uri with spaces and unicode", &batch.Meta{URI: "file:///data/été 1.ndjson"}, "", ""},
		{"nil", nil, "meta", "nil"},
		{"neither uri nor source", &batch.Meta{PartitionKey: "k", EventCount: 3}, "uri", "one of them is required"},
		{"partition key too long", &batch.Meta{URI: "u", PartitionKey: strings.Repeat("p", batch.MaxPartitionKeyBytes+1)}, "partition_key", "too long: 257 bytes, max 256"},
		{"partition key NUL", &batch.Meta{URI: "u", PartitionKey: "a\x00"}, "partition_key", "control character U+0000"},
		{"partition key invalid utf8", &batch.Meta{URI: "u", PartitionKey: "\xff"}, "partition_key", "not valid UTF-8"},
		{"uri too long", &batch.Meta{URI: strings.Repeat("u", batch.MaxURIBytes+1)}, "uri", "too long: 2049 bytes, max 2048"},
		{"uri newline", &batch.Meta{URI: "s3://b/k\n"}, "uri", "control character U+000A"},
		{"uri invalid utf8", &batch.Meta{URI: "s3://\xc3"}, "uri", "not valid UTF-8"},
		{"invalid source", &batch.Meta{URI: "u", Source: batch.Source{Topic: "t", Start: 5, End: 1}}, "source", "end: 1 is not after start 5"},
		{"source without topic", &batch.Meta{Source: batch.Source{Start: 0, End: 1}}, "source", "topic: empty"},
		{"negative event count", &batch.Meta{URI: "u", EventCount: -1}, "event_count", "negative (-1)"},
		{"negative byte size", &batch.Meta{URI: "u", ByteSize: -2}, "byte_size", "negative (-2)"},
		{"payload too large", &batch.Meta{URI: "u", Payload: bigPayload}, "payload", "too large: 65537 bytes, max 65536"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.meta.Validate()
			if tt.wantField == "" {
				require.NoError(t, err)
				return
			}
			requireInvalid(t, err, tt.wantField, tt.wantErr)
			require.NotContains(t, err.Error(), "PPPP", "message contains the payload")
		})
	}
}

func TestBatchJSONRoundTrip(t *testing.T) {
	at := time.Date(2025, 3, 4, 5, 6, 7, 890123000, time.UTC)
	full := batch.Batch{
		ID:    42,
		Queue: "orders",
		State: batch.StateRunning,
		Meta: batch.Meta{
			PartitionKey: "tenant-7",
			URI:          "s3://bucket/2025/03/04/batch-42.ndjson.zst",
			Source:       batch.Source{Topic: "orders", Partition: 3, Start: 100, End: 200},
			EventCount:   100,
			ByteSize:     123456,
			Payload:      []byte{0, 1, 2, 0xff, '"'},
		},
		IdempotencyKey: "src1:orders:3:100-200",
		Priority:       -2,
		Attempt:        2,
		MaxAttempts:    25,
		RunAt:          at,
		CreatedAt:      at.Add(-time.Minute),
		Lease:          batch.Lease{Token: 9, Owner: "worker-a/123", ExpiresAt: at.Add(30 * time.Second)},
		LastError:      "timeout: é",
	}
	minimal := batch.Batch{ID: 1, Queue: "q", State: batch.StateAvailable, Meta: batch.Meta{URI: "s3://b/k"}, MaxAttempts: 1, RunAt: at, CreatedAt: at}

	tests := []struct {
		name       string
		in         batch.Batch
		wantKeys   []string // top-level JSON keys that must appear
		absentKeys []string // and that must not
	}{
		{"full", full,
			[]string{"id", "queue", "state", "partition_key", "uri", "source", "event_count", "byte_size", "payload", "idempotency_key", "priority", "attempt", "max_attempts", "run_at", "created_at", "lease", "last_error"},
			[]string{"Meta", "meta"}},
		{"minimal", minimal,
			[]string{"id", "queue", "state", "uri", "priority", "attempt", "max_attempts", "run_at", "created_at"},
			[]string{"source", "lease", "payload", "partition_key", "event_count", "byte_size", "idempotency_key", "last_error", "Meta"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := json.Marshal(tt.in)
			require.NoError(t, err)

			var fields map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(data, &fields))
			for _, k := range tt.wantKeys {
				require.Contains(t, fields, k, "JSON %s", data)
			}
			for _, k := range tt.absentKeys {
				require.NotContains(t, fields, k, "JSON %s", data)
			}

			var out batch.Batch
			require.NoError(t, json.Unmarshal(data, &out))
			require.Equal(t, tt.in, out)
		})
	}

	// Field names are part of the format other tools read.
	data, err := json.Marshal(full)
	require.NoError(t, err)
	require.Contains(t, string(data), `"source":{"topic":"orders","partition":3,"start":100,"end":200}`)
	require.Contains(t, string(data), `"lease":{"token":9,"owner":"worker-a/123","expires_at":"2025-03-04T05:06:37.890123Z"}`)
	require.Contains(t, string(data), `"state":"running"`)
}
