// Package sqlident validates and quotes the SQL identifiers skiplock
// substitutes into its statements. The only identifier skiplock ever
// substitutes is a schema name; everything else is a positional parameter.
package sqlident

import (
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// MaxBytes is PostgreSQL's identifier limit (NAMEDATALEN - 1). Longer names
// would be silently truncated by the server, so they are rejected instead.
const MaxBytes = 63

// Errors returned by Schema. Each describes why a name was rejected.
var (
	ErrEmpty    = errors.New("empty")
	ErrTooLong  = errors.New("longer than 63 bytes")
	ErrEncoding = errors.New("not valid UTF-8")
	ErrNUL      = errors.New("contains a NUL byte")
	ErrReserved = errors.New(`begins with "pg_", which PostgreSQL reserves for system schemas`)
)

// Schema checks name and returns it quoted for use in SQL text, for example
// `"x""; drop table y; --"`. Any name PostgreSQL can store is accepted and
// quoted; names it would reject or truncate get one of the errors above.
func Schema(name string) (string, error) {
	switch {
	case name == "":
		return "", ErrEmpty
	case len(name) > MaxBytes:
		return "", ErrTooLong
	case !utf8.ValidString(name):
		return "", ErrEncoding
	case strings.IndexByte(name, 0) >= 0:
		return "", ErrNUL
	case strings.HasPrefix(strings.ToLower(name), "pg_"):
		return "", ErrReserved
	}
	return pgx.Identifier{name}.Sanitize(), nil
}
