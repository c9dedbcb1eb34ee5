package pgtest_test

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/skiplock/skiplock/internal/pgtest"
)

// A primary, a streaming replica, and a proxy standing in for the cluster endpoint; a failover
// promotes the replica and moves the endpoint.
func Example() {
	ctx := context.Background()
	primary, err := pgtest.StartPrimary(ctx, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer primary.Close()
	replica, err := primary.StartReplica(ctx, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer replica.Close()
	addr := func(s *pgtest.Server) string { return net.JoinHostPort(s.Host(), strconv.Itoa(s.Port())) }
	endpoint, err := pgtest.NewProxy(addr(primary))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer endpoint.Close()

	writer := func() string {
		conn, err := pgx.Connect(ctx, endpoint.ConnString(""))
		if err != nil {
			return err.Error()
		}
		defer conn.Close(ctx)
		var port int
		if err := conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
			return err.Error()
		}
		return fmt.Sprintf("pg-%d", port)
	}
	fmt.Println("writer is the primary:", writer() == primary.Name())

	if err := primary.DemoteReadOnly(ctx); err != nil {
		fmt.Println(err)
		return
	}
	if err := replica.Promote(ctx); err != nil {
		fmt.Println(err)
		return
	}
	endpoint.SetTarget(addr(replica))
	fmt.Println("writer is the former replica:", writer() == replica.Name())
	// Output:
	// writer is the primary: true
	// writer is the former replica: true
}
