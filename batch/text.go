package batch

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on the sizes of batch fields, in bytes. The queue stores values up to
// these sizes; validation refuses larger ones.
const (
	// MaxQueueNameBytes is the longest queue name, in bytes.
	MaxQueueNameBytes = 128
	// MaxPartitionKeyBytes is the longest Meta.PartitionKey, in bytes.
	MaxPartitionKeyBytes = 256
	// MaxURIBytes is the longest Meta.URI, in bytes.
	MaxURIBytes = 2048
	// MaxIdempotencyKeyBytes is the longest idempotency key, in bytes.
	// Source.Key always returns a key within this limit.
	MaxIdempotencyKeyBytes = 256
	// MaxPayloadBytes is the largest Meta.Payload (opaque user metadata per
	// batch), in bytes.
	MaxPayloadBytes = 64 << 10
	// MaxLastErrorBytes is the longest Batch.LastError, in bytes; TruncateError
	// cuts longer error text to fit, keeping it valid UTF-8.
	MaxLastErrorBytes = 4096
	// MaxTopicBytes is the longest Source.Topic, in bytes (Kafka's limit on
	// topic names).
	MaxTopicBytes = 249
)

// textProblem returns why s is not acceptable text of at most maxBytes bytes,
// or "" when it is. Acceptable text is valid UTF-8 without control characters
// (unicode.IsControl: U+0000–U+001F and U+007F–U+009F, so NUL, tab and
// newline are refused). It does not check emptiness.
func textProblem(s string, maxBytes int) string {
	if len(s) > maxBytes {
		return fmt.Sprintf("too long: %d bytes, max %d: %s", len(s), maxBytes, quote(s))
	}
	if !utf8.ValidString(s) {
		return "not valid UTF-8: " + quote(s)
	}
	for i, r := range s {
		if unicode.IsControl(r) {
			return fmt.Sprintf("control character %U at byte %d: %s", r, i, quote(s))
		}
	}
	return ""
}

// ValidateQueueName reports whether name can name a queue: 1 to
// MaxQueueNameBytes bytes of valid UTF-8 without control characters (NUL,
// tab, newline and the other C0/C1 controls), every character printable
// (unicode.IsPrint: letters, marks, numbers, punctuation, symbols and the
// ASCII space — so no other whitespace such as U+00A0, no format characters
// such as U+200B ZERO WIDTH SPACE, U+200D or U+FEFF, no private-use or
// unassigned code points), and neither starting nor ending with a space (so
// no name is only spaces). It does not block. The error is a
// *ValidationError with Field "queue" (errors.Is(err, ErrInvalid) is true).
//
// Names are compared byte for byte; they are not normalised. Two names that
// render alike but differ in bytes — "é" as U+00E9 and as "e" + U+0301, or
// Latin "a" and Cyrillic "а" — name two different queues. The rule above
// only removes the characters that are invisible or blank, which are the
// look-alikes a careless producer can make by accident (a pasted
// zero-width space, a trailing blank); producers and workers of one queue
// must spell its name with the same bytes.
func ValidateQueueName(name string) error {
	if name == "" {
		return invalid("queue", "empty")
	}
	if p := textProblem(name, MaxQueueNameBytes); p != "" {
		return invalid("queue", "%s", p)
	}
	for i, r := range name {
		if !unicode.IsPrint(r) {
			return invalid("queue", "non-printable character %U at byte %d: %s", r, i, quote(name))
		}
	}
	if strings.TrimLeft(name, " ") == "" {
		return invalid("queue", "only spaces: %s", quote(name))
	}
	if name[0] == ' ' || name[len(name)-1] == ' ' {
		return invalid("queue", "leading or trailing space: %s", quote(name))
	}
	return nil
}

// ValidateIdempotencyKey reports whether key can be stored as a batch's
// idempotency key: empty (meaning "no key"), or at most
// MaxIdempotencyKeyBytes bytes of valid UTF-8 without control characters.
// Every key returned by Source.Key passes. It does not block. The error is a
// *ValidationError with Field "idempotency_key".
func ValidateIdempotencyKey(key string) error {
	if p := textProblem(key, MaxIdempotencyKeyBytes); p != "" {
		return invalid("idempotency_key", "%s", p)
	}
	return nil
}

// TruncateError returns s made fit for Batch.LastError: at most
// MaxLastErrorBytes bytes of valid UTF-8 without NUL bytes (which a
// PostgreSQL text column refuses). Each byte that is not part of valid UTF-8,
// and each NUL, becomes U+FFFD. When the result would be too long it is cut on
// a rune boundary and ends with the marker "…" (U+2026), the whole staying
// within MaxLastErrorBytes. Text that already fits is returned unchanged,
// without allocating.
func TruncateError(s string) string {
	if len(s) <= MaxLastErrorBytes && storable(s) {
		return s
	}
	const (
		marker      = "…"
		replacement = "\uFFFD"
	)
	out := make([]byte, 0, min(len(s)+len(marker), MaxLastErrorBytes))
	cut := -1 // length of out at the last rune boundary that leaves room for marker
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		piece := s[i : i+size]
		if r == 0 || (r == utf8.RuneError && size == 1) {
			piece = replacement
		}
		if cut < 0 && len(out)+len(piece) > MaxLastErrorBytes-len(marker) {
			cut = len(out)
		}
		if len(out)+len(piece) > MaxLastErrorBytes {
			return string(append(out[:cut], marker...))
		}
		out = append(out, piece...)
		i += size
	}
	return string(out)
}

// storable reports whether s is valid UTF-8 without NUL bytes.
func storable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return false
		}
	}
	return utf8.ValidString(s)
}
