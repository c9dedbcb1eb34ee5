package sqlident

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSchema(t *testing.T) {
	tests := []struct {
		name    string
		want    string
		wantErr error
	}{
		{name: "skiplock", want: `"skiplock"`},
		{name: `x"; drop table y; --`, want: `"x""; drop table y; --"`},
		{name: "Mixed Case", want: `"Mixed Case"`},
		{name: strings.Repeat("a", 63), want: `"` + strings.Repeat("a", 63) + `"`},
		{name: "", wantErr: ErrEmpty},
		{name: strings.Repeat("a", 64), wantErr: ErrTooLong},
		{name: "bad\xff", wantErr: ErrEncoding},
		{name: "a\x00b", wantErr: ErrNUL},
		{name: "pg_temp", wantErr: ErrReserved},
		{name: "PG_x", wantErr: ErrReserved},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Schema(tt.name)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				require.Empty(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}
