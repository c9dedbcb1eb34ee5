package failover

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Identity names one PostgreSQL server: where it listens and when its
// postmaster started (a restarted or re-created server is a different
// identity), plus the Aurora instance identifier where the server has one.
type Identity struct {
	Addr     string    // inet_server_addr(); empty over a Unix socket
	Port     int       // inet_server_port()
	Started  time.Time // pg_postmaster_start_time()
	Instance string    // aurora_db_instance_identifier(), if available
}

// IsZero reports whether the identity is unknown.
func (i Identity) IsZero() bool {
	return i.Port == 0 && i.Addr == "" && i.Started.IsZero() && i.Instance == ""
}

// Equal reports whether i and o are the same server.
func (i Identity) Equal(o Identity) bool {
	return i.Addr == o.Addr && i.Port == o.Port && i.Started.Equal(o.Started) && i.Instance == o.Instance
}

// String formats the identity as address:port and start time.
func (i Identity) String() string {
	if i.IsZero() {
		return "unknown server"
	}
	s := fmt.Sprintf("%s:%d (up since %s)", i.Addr, i.Port, i.Started.UTC().Format("15:04:05.000"))
	if i.Instance != "" {
		s = i.Instance + " " + s
	}
	return s
}

// Role is what a server said about itself.
type Role struct {
	InRecovery bool // pg_is_in_recovery(): a standby
	ReadOnly   bool // transaction_read_only for a new session
}

// Writer reports whether the server takes writes.
func (r Role) Writer() bool { return !r.InRecovery && !r.ReadOnly }

// String returns "writer", "read-only" or "standby".
func (r Role) String() string {
	switch {
	case r.InRecovery:
		return "standby"
	case r.ReadOnly:
		return "read-only"
	}
	return "writer"
}

// The role check: one round trip, run on every new connection and by every
// probe. Aurora's instance identifier is asked for only where the function
// exists, which the first check finds out.
const (
	sqlRole = `SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on',
    coalesce(host(inet_server_addr()), ''), coalesce(inet_server_port(), 0), pg_postmaster_start_time(),
    to_regproc('aurora_db_instance_identifier') IS NOT NULL`
	sqlRoleAurora = `SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on',
    coalesce(host(inet_server_addr()), ''), coalesce(inet_server_port(), 0), pg_postmaster_start_time(),
    aurora_db_instance_identifier()`
)

// checkRole asks a connection for the server's role and identity. aurora
// says whether the server has aurora_db_instance_identifier(): 0 unknown,
// 1 yes, 2 no; it is updated when first learned.
func checkRole(ctx context.Context, conn *pgx.Conn, aurora *atomic.Int32) (Role, Identity, error) {
	var (
		r   Role
		id  Identity
		has bool
	)
	if aurora.Load() != 1 {
		err := conn.QueryRow(ctx, sqlRole, pgx.QueryExecModeSimpleProtocol).
			Scan(&r.InRecovery, &r.ReadOnly, &id.Addr, &id.Port, &id.Started, &has)
		if err != nil || !has {
			aurora.CompareAndSwap(0, 2)
			return r, id, err
		}
		aurora.Store(1)
	}
	err := conn.QueryRow(ctx, sqlRoleAurora, pgx.QueryExecModeSimpleProtocol).
		Scan(&r.InRecovery, &r.ReadOnly, &id.Addr, &id.Port, &id.Started, &id.Instance)
	return r, id, err
}
