package batch

// Meta describes the events of one batch as a producer supplies it: where the
// events live (URI, Source or both), how many there are and how large, and
// opaque user metadata. At least one of URI and Source must be set.
type Meta struct {
	// PartitionKey is an optional grouping key, e.g. a tenant or a Kafka
	// message key: at most MaxPartitionKeyBytes bytes of valid UTF-8 without
	// control characters.
	PartitionKey string `json:"partition_key,omitempty"`
	// URI says where the events live, e.g. "s3://bucket/key": at most
	// MaxURIBytes bytes of valid UTF-8 without control characters. It is not
	// parsed; its meaning is the application's.
	URI string `json:"uri,omitempty"`
	// Source is the log range the events were read from, or the zero Source.
	Source Source `json:"source,omitzero"`
	// EventCount is the number of events in the batch, >= 0 (0 when unknown).
	EventCount int64 `json:"event_count,omitempty"`
	// ByteSize is the size of the batch's events in bytes, >= 0 (0 when
	// unknown).
	ByteSize int64 `json:"byte_size,omitempty"`
	// Payload is opaque user metadata of at most MaxPayloadBytes bytes. In
	// JSON it is base64 (encoding/json's encoding of []byte).
	Payload []byte `json:"payload,omitempty"`
}

// Validate reports whether m can be enqueued. It checks, in this order:
// PartitionKey (Field "partition_key"), URI ("uri"), Source when it is not
// zero ("source", see Source.Validate), that URI or Source is set ("uri"),
// EventCount ("event_count") and ByteSize ("byte_size") not negative, and
// Payload size ("payload"). It reports the first problem as a
// *ValidationError (errors.Is(err, ErrInvalid) is true); messages never
// include the payload. A nil m is refused with Field "meta". It does not
// block.
func (m *Meta) Validate() error {
	if m == nil {
		return invalid("meta", "nil")
	}
	if p := textProblem(m.PartitionKey, MaxPartitionKeyBytes); p != "" {
		return invalid("partition_key", "%s", p)
	}
	if p := textProblem(m.URI, MaxURIBytes); p != "" {
		return invalid("uri", "%s", p)
	}
	if !m.Source.IsZero() {
		if err := m.Source.Validate(); err != nil {
			return err
		}
	} else if m.URI == "" {
		return invalid("uri", "empty, and source is not set either: one of them is required")
	}
	if m.EventCount < 0 {
		return invalid("event_count", "negative (%d)", m.EventCount)
	}
	if m.ByteSize < 0 {
		return invalid("byte_size", "negative (%d)", m.ByteSize)
	}
	if len(m.Payload) > MaxPayloadBytes {
		return invalid("payload", "too large: %d bytes, max %d", len(m.Payload), MaxPayloadBytes)
	}
	return nil
}
