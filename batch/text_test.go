package batch_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
)

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// requireInvalid asserts that err is a *ValidationError for field whose
// message contains reason, that it matches ErrInvalid, and that its message
// stays short.
func requireInvalid(t *testing.T, err error, field, reason string) {
	t.Helper()
	require.Error(t, err)
	require.ErrorIs(t, err, batch.ErrInvalid)
	var ve *batch.ValidationError
	require.ErrorAs(t, err, &ve)
	require.Equal(t, field, ve.Field)
	require.Contains(t, ve.Reason, reason)
	require.True(t, strings.HasPrefix(err.Error(), "batch: invalid "+field+": "), "message %q", err.Error())
	require.Less(t, len(err.Error()), 200, "message too long: %q", err.Error())
	require.True(t, utf8.ValidString(err.Error()), "message not UTF-8: %q", err.Error())
}

func TestValidationErrorIs(t *testing.T) {
	err := error(&batch.ValidationError{Field: "queue", Reason: "empty"})
	require.Equal(t, "batch: invalid queue: empty", err.Error())
	require.ErrorIs(t, err, batch.ErrInvalid)
	require.NotErrorIs(t, err, batch.ErrClosed)
	wrapped := errors.Join(errors.New("enqueue"), err)
	require.ErrorIs(t, wrapped, batch.ErrInvalid)
	require.NotErrorIs(t, errors.New("batch: invalid"), batch.ErrInvalid)
}

func TestValidateQueueName(t *testing.T) {
	tests := []struct {
		name    string
		queue   string
		wantErr string // substring of the reason; "" for valid
	}{
		{"simple", "orders", ""},
		{"punctuation and space", "eu/orders: v2 (high)", ""},
		{"unicode", "commandes-été-🚀", ""},
		{"one byte", "q", ""},
		{"exactly at limit", strings.Repeat("q", batch.MaxQueueNameBytes), ""},
		{"at limit with multibyte", strings.Repeat("é", batch.MaxQueueNameBytes/2), ""},
		{"empty", "", "empty"},
		{"too long by one byte", strings.Repeat("q", batch.MaxQueueNameBytes+1), "too long: 129 bytes, max 128"},
		{"too long by one byte multibyte", strings.Repeat("é", batch.MaxQueueNameBytes/2) + "q", "too long: 129 bytes"},
		{"NUL", "or\x00ders", "control character U+0000 at byte 2"},
		{"only NUL", "\x00", "control character U+0000"},
		{"tab", "a\tb", "control character U+0009"},
		{"newline", "orders\n", "control character U+000A"},
		{"DEL", "a\x7f", "control character U+007F"},
		{"C1 control", "a\u0085", "control character U+0085"},
		{"invalid utf8", "a\xffb", "not valid UTF-8"},
		{"truncated multibyte", "caf\xc3", "not valid UTF-8"},
		{"surrogate half", "\xed\xa0\x80", "not valid UTF-8"},
		{"one space", " ", "only spaces"},
		{"spaces only", "   ", "only spaces"},
		{"leading space", " orders", "leading or trailing space"},
		{"trailing space", "orders ", "leading or trailing space"},
		{"no-break space", "\u00a0", "non-printable character U+00A0"},
		{"ideographic space", "a\u3000b", "non-printable character U+3000 at byte 1"},
		{"zero width space", "orders\u200b", "non-printable character U+200B at byte 6"},
		{"zero width joiner", "a\u200db", "non-printable character U+200D"},
		{"byte order mark", "\ufefforders", "non-printable character U+FEFF at byte 0"},
		{"bidi override", "a\u202eb", "non-printable character U+202E"},
		{"private use", "a\ue000", "non-printable character U+E000"},
		{"combining mark", "e\u0301te", ""},
		{"cyrillic look-alike is its own name", "\u043erders", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := batch.ValidateQueueName(tt.queue)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			requireInvalid(t, err, "queue", tt.wantErr)
		})
	}
}

func TestValidateQueueNameQuotesShortPrefix(t *testing.T) {
	name := strings.Repeat("é", 200) // 400 bytes
	err := batch.ValidateQueueName(name)
	requireInvalid(t, err, "queue", "too long: 400 bytes")
	// A quoted prefix, cut on a rune boundary and marked.
	require.Contains(t, err.Error(), `: "`+strings.Repeat("é", 16)+`"…`)

	// 3-byte runes: 32 bytes is mid-rune, so the prefix backs up to 30.
	err = batch.ValidateQueueName(strings.Repeat("€", 50))
	require.Contains(t, err.Error(), `: "`+strings.Repeat("€", 10)+`"…`)
	require.True(t, utf8.ValidString(err.Error()))

	err = batch.ValidateQueueName("bad\x00name")
	require.Contains(t, err.Error(), `"bad\x00name"`)
}

func TestValidateIdempotencyKey(t *testing.T) {
	tests := []struct {
		name    string
		key     string
		wantErr string
	}{
		{"empty means none", "", ""},
		{"source key", batch.Source{Topic: "t", Start: 1, End: 2}.Key(), ""},
		{"at limit", strings.Repeat("k", batch.MaxIdempotencyKeyBytes), ""},
		{"too long by one", strings.Repeat("k", batch.MaxIdempotencyKeyBytes+1), "too long: 257 bytes, max 256"},
		{"NUL", "k\x00", "control character U+0000"},
		{"invalid utf8", "\xc3", "not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := batch.ValidateIdempotencyKey(tt.key)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			requireInvalid(t, err, "idempotency_key", tt.wantErr)
		})
	}
}

func TestTruncateError(t *testing.T) {
	const max = batch.MaxLastErrorBytes
	tests := []struct {
		name string
		in   string
		want string // exact result; "" to check only the properties
		cut  bool   // whether the "…" marker is expected
	}{
		{"empty", "", "", false},
		{"short", "boom", "boom", false},
		{"exactly at limit", strings.Repeat("a", max), strings.Repeat("a", max), false},
		{"one byte over", strings.Repeat("a", max+1), strings.Repeat("a", max-3) + "…", true},
		{"multibyte at limit", strings.Repeat("é", max/2), strings.Repeat("é", max/2), false},
		{"multibyte over", strings.Repeat("é", max/2+1), strings.Repeat("é", (max-3)/2) + "…", true},
		{"4-byte runes over", strings.Repeat("🚀", max/4+1), strings.Repeat("🚀", (max-3)/4) + "…", true},
		{"rune straddles the cut", strings.Repeat("a", max-4) + "🚀🚀", strings.Repeat("a", max-4) + "…", true},
		{"huge", strings.Repeat("x", 1<<20), strings.Repeat("x", max-3) + "…", true},
		{"invalid utf8 short", "bad \xff byte", "bad \uFFFD byte", false},
		{"NUL short", "nul\x00here", "nul\uFFFDhere", false},
		{"truncated rune at end", "caf\xc3", "caf\uFFFD", false},
		{"invalid bytes over limit", strings.Repeat("\xff", max), "", true},
		{"cut inside trailing invalid", strings.Repeat("a", max) + "\xff\xfe", strings.Repeat("a", max-3) + "…", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := batch.TruncateError(tt.in)
			require.LessOrEqual(t, len(got), max)
			require.True(t, utf8.ValidString(got), "result not valid UTF-8")
			require.NotContains(t, got, "\x00")
			require.Equal(t, tt.cut, strings.HasSuffix(got, "…"), "marker")
			if tt.want != "" || tt.in == "" {
				require.Equal(t, tt.want, got)
			}
			require.Equal(t, got, batch.TruncateError(got), "not idempotent")
		})
	}
}

func TestStateValid(t *testing.T) {
	tests := []struct {
		s    batch.State
		want bool
	}{
		{batch.StateAvailable, true},
		{batch.StateRunning, true},
		{batch.StateDead, true},
		{batch.StateCompleted, true},
		{"", false},
		{"Available", false},
		{"pending", false},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, tt.s.Valid(), "%q", tt.s)
	}
}
