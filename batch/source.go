package batch

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Source is a position range in an ordered log such as a Kafka topic: the
// offsets [Start, End) of partition Partition of topic Topic. A batch whose
// events were read from such a log records it so that the batch can be found,
// replayed and deduplicated by position (see Key).
//
// The zero Source means "no source" (see IsZero).
type Source struct {
	// Topic names the log, e.g. a Kafka topic.
	Topic string `json:"topic"`
	// Partition is the partition of Topic, >= 0.
	Partition int32 `json:"partition"`
	// Start is the first offset of the range, inclusive, >= 0.
	Start int64 `json:"start"`
	// End is the offset after the last one of the range, exclusive, > Start.
	End int64 `json:"end"`
}

// IsZero reports whether s is the zero Source, which means "no source". JSON
// encoding omits a zero Source in Meta (`omitzero`).
func (s Source) IsZero() bool {
	return s == Source{}
}

// Validate reports whether s is a usable range: Topic of 1 to MaxTopicBytes
// bytes of valid UTF-8 without control characters, Partition >= 0 and
// 0 <= Start < End. It does not block. The error is a *ValidationError with
// Field "source" whose Reason names the part ("topic", "partition", "start",
// "end"); errors.Is(err, ErrInvalid) is true.
func (s Source) Validate() error {
	if s.Topic == "" {
		return invalid("source", "topic: empty")
	}
	if p := textProblem(s.Topic, MaxTopicBytes); p != "" {
		return invalid("source", "topic: %s", p)
	}
	if s.Partition < 0 {
		return invalid("source", "partition: negative (%d)", s.Partition)
	}
	if s.Start < 0 {
		return invalid("source", "start: negative (%d)", s.Start)
	}
	if s.End <= s.Start {
		return invalid("source", "end: %d is not after start %d", s.End, s.Start)
	}
	return nil
}

// Len returns the number of offsets in the range, End-Start, or 0 when the
// range is empty or invalid (Start < 0 or End <= Start).
func (s Source) Len() int64 {
	if s.Start < 0 || s.End <= s.Start {
		return 0
	}
	return s.End - s.Start
}

// String returns the range for humans, as "topic[partition]:start-end", e.g.
// "orders[3]:100-200". Unlike Key it does not escape the topic, so it is not
// guaranteed to be unambiguous.
func (s Source) String() string {
	return fmt.Sprintf("%s[%d]:%d-%d", s.Topic, s.Partition, s.Start, s.End)
}

// Key formats.
const (
	// keyPrefix starts a readable key: "src1:" topic ":" partition ":" start "-" end.
	keyPrefix = "src1:"
	// keyHashPrefix starts a hashed key: "src1h:" + 64 lower-case hex digits.
	keyHashPrefix = "src1h:"
	// keyHashDomain starts the hashed encoding, so that these digests cannot
	// coincide with digests of other encodings.
	keyHashDomain = "skiplock/batch.Source/v1\x00"
)

// Key returns the deterministic idempotency key of the range, for use as a
// batch's idempotency key: the same Source always gives the same key,
// different Sources give different keys, and the key is at most
// MaxIdempotencyKeyBytes bytes of printable ASCII (it passes
// ValidateIdempotencyKey). Key does not validate s: invalid Sources get keys
// too, equally distinct.
//
// The format is stable — keys are stored in databases and compared across
// versions, so it will not change; a different format would get a new prefix.
// It is, where the whole fits in MaxIdempotencyKeyBytes:
//
//	"src1:" + escape(Topic) + ":" + Partition + ":" + Start + "-" + End
//
// with the numbers in decimal (strconv.FormatInt) and escape keeping the
// bytes A–Z, a–z, 0–9, '.', '_' and '-' and writing every other byte
// (including ':', '/', '%', space and each byte of a non-ASCII character) as
// '%' and two upper-case hex digits. The escaped topic holds no ':', so the
// key reads back unambiguously; Kafka topic names need no escaping at all.
// For example Source{"orders", 3, 100, 200} has the key
// "src1:orders:3:100-200".
//
// Otherwise (long topics) it is
//
//	"src1h:" + hex(sha256("skiplock/batch.Source/v1\x00" +
//	    uvarint(len(Topic)) + Topic + int32be(Partition) +
//	    int64be(Start) + int64be(End)))
//
// in lower-case hex, 70 bytes in all. The two forms never coincide: their
// prefixes differ at the fifth byte.
func (s Source) Key() string {
	// The readable form is at least len(keyPrefix)+len(Topic)+":0:0-0" bytes.
	if len(keyPrefix)+len(s.Topic)+len(":0:0-0") <= MaxIdempotencyKeyBytes {
		if k := s.readableKey(); len(k) <= MaxIdempotencyKeyBytes {
			return k
		}
	}
	return s.hashedKey()
}

func (s Source) readableKey() string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(keyPrefix) + len(s.Topic) + len("::-") + 11 + 2*20) // escaping may grow it further
	b.WriteString(keyPrefix)
	for i := 0; i < len(s.Topic); i++ {
		c := s.Topic[i]
		if keyUnescaped(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0xF])
	}
	var num [20]byte
	b.WriteByte(':')
	b.Write(strconv.AppendInt(num[:0], int64(s.Partition), 10))
	b.WriteByte(':')
	b.Write(strconv.AppendInt(num[:0], s.Start, 10))
	b.WriteByte('-')
	b.Write(strconv.AppendInt(num[:0], s.End, 10))
	return b.String()
}

func (s Source) hashedKey() string {
	h := sha256.New()
	buf := make([]byte, 0, len(keyHashDomain)+binary.MaxVarintLen64+4+8+8)
	buf = append(buf, keyHashDomain...)
	buf = binary.AppendUvarint(buf, uint64(len(s.Topic)))
	h.Write(buf)
	h.Write([]byte(s.Topic))
	buf = buf[:0]
	buf = binary.BigEndian.AppendUint32(buf, uint32(s.Partition))
	buf = binary.BigEndian.AppendUint64(buf, uint64(s.Start))
	buf = binary.BigEndian.AppendUint64(buf, uint64(s.End))
	h.Write(buf)
	var sum [sha256.Size]byte
	return keyHashPrefix + hex.EncodeToString(h.Sum(sum[:0]))
}

// keyUnescaped reports whether Key writes byte c of a topic as it is.
func keyUnescaped(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '_' || c == '-'
}
