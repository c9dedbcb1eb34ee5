package batch_test

import (
	"encoding/hex"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
)

// parseKey reads a readable ("src1:") key back into a Source; it is the
// test's proof that the readable form is unambiguous.
func parseKey(t testing.TB, key string) batch.Source {
	t.Helper()
	rest, ok := strings.CutPrefix(key, "src1:")
	require.True(t, ok, "key %q lacks the src1: prefix", key)
	parts := strings.Split(rest, ":")
	require.Len(t, parts, 3, "key %q", key)

	var topic []byte
	esc := parts[0]
	for i := 0; i < len(esc); i++ {
		c := esc[i]
		if c != '%' {
			require.True(t, c == '.' || c == '_' || c == '-' || '0' <= c && c <= '9' ||
				'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z', "unescaped byte %q in key %q", c, key)
			topic = append(topic, c)
			continue
		}
		require.LessOrEqual(t, i+3, len(esc), "short escape in %q", key)
		hx := esc[i+1 : i+3]
		require.Equal(t, strings.ToUpper(hx), hx, "lower-case escape in %q", key)
		b, err := hex.DecodeString(hx)
		require.NoError(t, err, "key %q", key)
		topic = append(topic, b[0])
		i += 2
	}
	p, err := strconv.ParseInt(parts[1], 10, 32)
	require.NoError(t, err, "partition of %q", key)

	// start "-" end, where start may itself begin with '-'.
	r := parts[2]
	sep := strings.Index(r[1:], "-") + 1
	require.Positive(t, sep, "no range separator in %q", key)
	start, err := strconv.ParseInt(r[:sep], 10, 64)
	require.NoError(t, err, "start of %q", key)
	end, err := strconv.ParseInt(r[sep+1:], 10, 64)
	require.NoError(t, err, "end of %q", key)
	// Canonical decimal only, so that the number has one spelling.
	require.Equal(t, r, strconv.FormatInt(start, 10)+"-"+strconv.FormatInt(end, 10), "key %q", key)
	return batch.Source{Topic: string(topic), Partition: int32(p), Start: start, End: end}
}

// checkKey asserts the properties every key has.
func checkKey(t testing.TB, s batch.Source) string {
	t.Helper()
	k := s.Key()
	require.Equal(t, k, s.Key(), "Key is not deterministic for %#v", s)
	require.LessOrEqual(t, len(k), batch.MaxIdempotencyKeyBytes, "key of %#v", s)
	require.NoError(t, batch.ValidateIdempotencyKey(k))
	for i := 0; i < len(k); i++ {
		require.True(t, k[i] > ' ' && k[i] < 0x7f, "non-printable byte in key %q", k)
	}
	if strings.HasPrefix(k, "src1h:") {
		require.Len(t, k, len("src1h:")+64, "hashed key %q", k)
		_, err := hex.DecodeString(k[len("src1h:"):])
		require.NoError(t, err)
		require.Equal(t, strings.ToLower(k), k, "hashed key not lower-case: %q", k)
	} else {
		require.Equal(t, s, parseKey(t, k), "key %q does not read back", k)
	}
	return k
}

func TestSourceKey(t *testing.T) {
	long := strings.Repeat("x", batch.MaxTopicBytes)
	tests := []struct {
		name   string
		src    batch.Source
		want   string // exact key, or "" to check only the form
		hashed bool
	}{
		{"plain", batch.Source{Topic: "orders", Partition: 3, Start: 100, End: 200}, "src1:orders:3:100-200", false},
		{"kafka legal chars", batch.Source{Topic: "a.B_c-9", Partition: 0, Start: 0, End: 1}, "src1:a.B_c-9:0:0-1", false},
		{"colon", batch.Source{Topic: "a:1", Partition: 2, Start: 3, End: 4}, "src1:a%3A1:2:3-4", false},
		{"colon looks like fields", batch.Source{Topic: "a:1:2", Partition: 3, Start: 4, End: 5}, "src1:a%3A1%3A2:3:4-5", false},
		{"slash", batch.Source{Topic: "eu/orders", Partition: 1, Start: 1, End: 2}, "src1:eu%2Forders:1:1-2", false},
		{"percent", batch.Source{Topic: "100%", Partition: 1, Start: 1, End: 2}, "src1:100%25:1:1-2", false},
		{"escaped-looking topic", batch.Source{Topic: "a%3A1", Partition: 2, Start: 3, End: 4}, "src1:a%253A1:2:3-4", false},
		{"space", batch.Source{Topic: "my topic", Partition: 0, Start: 0, End: 9}, "src1:my%20topic:0:0-9", false},
		{"unicode", batch.Source{Topic: "zé", Partition: 0, Start: 0, End: 1}, "src1:z%C3%A9:0:0-1", false},
		{"emoji", batch.Source{Topic: "🚀", Partition: 0, Start: 0, End: 1}, "src1:%F0%9F%9A%80:0:0-1", false},
		{"invalid utf8", batch.Source{Topic: "\xff", Partition: 0, Start: 0, End: 1}, "src1:%FF:0:0-1", false},
		{"range 1-23", batch.Source{Topic: "t", Partition: 0, Start: 1, End: 23}, "src1:t:0:1-23", false},
		{"range 12-3", batch.Source{Topic: "t", Partition: 0, Start: 12, End: 3}, "src1:t:0:12-3", false},
		{"dash in topic vs range", batch.Source{Topic: "t-1", Partition: 0, Start: 2, End: 3}, "src1:t-1:0:2-3", false},
		{"negative numbers", batch.Source{Topic: "t", Partition: -1, Start: -5, End: -3}, "src1:t:-1:-5--3", false},
		{"extremes", batch.Source{Topic: "t", Partition: math.MaxInt32, Start: math.MinInt64, End: math.MaxInt64},
			"src1:t:2147483647:-9223372036854775808-9223372036854775807", false},
		{"empty topic", batch.Source{}, "src1::0:0-0", false},
		{"longest topic", batch.Source{Topic: long, Partition: 1, Start: 1, End: 2}, "", true},
		{"escaping makes it long", batch.Source{Topic: strings.Repeat("/", 82), Partition: 1, Start: 1, End: 2}, "", true},
		{"escaping just fits", batch.Source{Topic: strings.Repeat("/", 81), Partition: 1, Start: 1, End: 2}, "", false},
		{"longest readable", batch.Source{Topic: strings.Repeat("y", 256-len("src1::0:0-1")), Partition: 0, Start: 0, End: 1}, "", false},
		{"one byte too long for readable", batch.Source{Topic: strings.Repeat("y", 257-len("src1::0:0-1")), Partition: 0, Start: 0, End: 1}, "", true},
		{"huge topic", batch.Source{Topic: strings.Repeat("z", 1<<16), Partition: 0, Start: 0, End: 1}, "", true},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := checkKey(t, tt.src)
			if tt.want != "" {
				require.Equal(t, tt.want, k)
			}
			require.Equal(t, tt.hashed, strings.HasPrefix(k, "src1h:"), "key %q", k)
			if other, dup := seen[k]; dup {
				t.Fatalf("key %q of %q already produced by %q", k, tt.name, other)
			}
			seen[k] = tt.name
		})
	}
}

func TestSourceKeyHashedDiffersPerField(t *testing.T) {
	base := batch.Source{Topic: strings.Repeat("h", batch.MaxTopicBytes), Partition: 1, Start: 10, End: 20}
	variants := []batch.Source{
		base,
		{Topic: base.Topic + "h", Partition: 1, Start: 10, End: 20},
		{Topic: base.Topic, Partition: 2, Start: 10, End: 20},
		{Topic: base.Topic, Partition: 1, Start: 11, End: 20},
		{Topic: base.Topic, Partition: 1, Start: 10, End: 21},
		// Length prefix: moving a byte between topic and numbers must not collide.
		{Topic: base.Topic[:len(base.Topic)-1], Partition: 1, Start: 10, End: 20},
	}
	seen := map[string]int{}
	for i, s := range variants {
		k := checkKey(t, s)
		require.True(t, strings.HasPrefix(k, "src1h:"), "variant %d: %q", i, k)
		j, dup := seen[k]
		require.False(t, dup, "variants %d and %d share key %q", j, i, k)
		seen[k] = i
	}
	// The hashed form is part of the stable format: pin one value.
	require.Equal(t, "src1h:"+pinnedHash, base.Key())
}

// pinnedHash is sha256 of the documented encoding of the base source in
// TestSourceKeyHashedDiffersPerField, computed independently in the test
// below; a change to it changes stored keys.
var pinnedHash = func() string {
	// uvarint(249) = 0xF9 0x01; partition 1, start 10, end 20 big-endian.
	enc := "skiplock/batch.Source/v1\x00" + "\xF9\x01" + strings.Repeat("h", 249) +
		"\x00\x00\x00\x01" + "\x00\x00\x00\x00\x00\x00\x00\x0A" + "\x00\x00\x00\x00\x00\x00\x00\x14"
	return sha256Hex(enc)
}()

func FuzzSourceKey(f *testing.F) {
	f.Add("orders", int32(3), int64(100), int64(200), "orders", int32(3), int64(100), int64(201))
	f.Add("t", int32(0), int64(1), int64(23), "t", int32(0), int64(12), int64(3))
	f.Add("a:1", int32(2), int64(3), int64(4), "a", int32(1), int64(2), int64(3))
	f.Add("a%3A1", int32(2), int64(3), int64(4), "a:1", int32(2), int64(3), int64(4))
	f.Add("t-1", int32(0), int64(2), int64(3), "t", int32(-1), int64(2), int64(3))
	f.Add("zé", int32(0), int64(0), int64(1), "z\xc3\xa9", int32(0), int64(0), int64(1))
	f.Add("\xff", int32(-1), int64(-5), int64(-3), "", int32(0), int64(0), int64(0))
	f.Add(strings.Repeat("x", 249), int32(1), int64(1), int64(2), strings.Repeat("x", 248), int32(1), int64(1), int64(2))
	f.Add(strings.Repeat("/", 80), int32(1), int64(1), int64(2), strings.Repeat("/", 81), int32(1), int64(1), int64(2))
	f.Fuzz(func(t *testing.T, t1 string, p1 int32, s1, e1 int64, t2 string, p2 int32, s2, e2 int64) {
		a := batch.Source{Topic: t1, Partition: p1, Start: s1, End: e1}
		b := batch.Source{Topic: t2, Partition: p2, Start: s2, End: e2}
		ka, kb := checkKey(t, a), checkKey(t, b)
		if a == b {
			require.Equal(t, ka, kb)
		} else {
			require.NotEqual(t, ka, kb, "%#v and %#v share a key", a, b)
		}
	})
}

func TestSourceValidate(t *testing.T) {
	tests := []struct {
		name    string
		src     batch.Source
		wantErr string // substring of the reason; "" for valid
	}{
		{"valid", batch.Source{Topic: "orders", Partition: 0, Start: 0, End: 1}, ""},
		{"valid unicode topic", batch.Source{Topic: "zé orders", Partition: 7, Start: 5, End: 500}, ""},
		{"topic at limit", batch.Source{Topic: strings.Repeat("t", batch.MaxTopicBytes), Start: 0, End: 1}, ""},
		{"empty topic", batch.Source{Topic: "", Start: 0, End: 1}, "topic: empty"},
		{"topic one byte too long", batch.Source{Topic: strings.Repeat("t", batch.MaxTopicBytes+1), Start: 0, End: 1}, "topic: too long: 250 bytes, max 249"},
		{"topic NUL", batch.Source{Topic: "a\x00b", Start: 0, End: 1}, "topic: control character U+0000 at byte 1"},
		{"topic newline", batch.Source{Topic: "a\n", Start: 0, End: 1}, "topic: control character U+000A"},
		{"topic invalid utf8", batch.Source{Topic: "a\xffb", Start: 0, End: 1}, "topic: not valid UTF-8"},
		{"negative partition", batch.Source{Topic: "t", Partition: -1, Start: 0, End: 1}, "partition: negative (-1)"},
		{"negative start", batch.Source{Topic: "t", Start: -1, End: 1}, "start: negative (-1)"},
		{"empty range", batch.Source{Topic: "t", Start: 5, End: 5}, "end: 5 is not after start 5"},
		{"reversed range", batch.Source{Topic: "t", Start: 12, End: 3}, "end: 3 is not after start 12"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.src.Validate()
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			requireInvalid(t, err, "source", tt.wantErr)
		})
	}
}

func TestSourceLenStringIsZero(t *testing.T) {
	tests := []struct {
		src    batch.Source
		len    int64
		str    string
		isZero bool
	}{
		{batch.Source{}, 0, "[0]:0-0", true},
		{batch.Source{Topic: "orders", Partition: 3, Start: 100, End: 200}, 100, "orders[3]:100-200", false},
		{batch.Source{Topic: "t", Start: 5, End: 5}, 0, "t[0]:5-5", false},
		{batch.Source{Topic: "t", Start: 9, End: 5}, 0, "t[0]:9-5", false},
		{batch.Source{Topic: "t", Start: math.MinInt64, End: math.MaxInt64}, 0, "t[0]:-9223372036854775808-9223372036854775807", false},
		{batch.Source{Start: 0, End: 1}, 1, "[0]:0-1", false},
	}
	for _, tt := range tests {
		t.Run(tt.str, func(t *testing.T) {
			require.Equal(t, tt.len, tt.src.Len())
			require.Equal(t, tt.str, tt.src.String())
			require.Equal(t, tt.isZero, tt.src.IsZero())
		})
	}
}
