package batch_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/skiplock/skiplock/batch"
)

func ExampleBuilder() {
	ctx := context.Background()
	b, err := batch.NewBuilder(&batch.BuilderConfig[string]{
		MaxCount: 3,
		MaxBytes: 1 << 20,
		MaxAge:   time.Hour, // only count and Close cut in this example
		Flush: func(ctx context.Context, c batch.Cut[string]) error {
			// Typically: write c.Items to object storage, then enqueue one
			// batch row pointing at them, with an idempotency key.
			fmt.Printf("cut %d (%s): %s, %d bytes\n", c.Seq, c.Reason, strings.Join(c.Items, " "), c.Bytes)
			return nil
		},
	})
	if err != nil {
		panic(err)
	}
	for _, ev := range []string{"a", "b", "c", "d", "e", "f", "g"} {
		if err := b.Add(ctx, ev, int64(len(ev))); err != nil {
			panic(err)
		}
	}
	if err := b.Close(ctx); err != nil { // flushes "g"
		panic(err)
	}
	// Output:
	// cut 1 (count): a b c, 3 bytes
	// cut 2 (count): d e f, 3 bytes
	// cut 3 (flush): g, 1 bytes
}

func ExampleSource_Key() {
	fmt.Println(batch.Source{Topic: "orders", Partition: 3, Start: 100, End: 200}.Key())
	fmt.Println(batch.Source{Topic: "eu/orders:v2", Partition: 0, Start: 0, End: 10}.Key())
	long := batch.Source{Topic: strings.Repeat("t", 249), Partition: 1, Start: 5, End: 6}.Key()
	fmt.Println(long[:6], len(long))
	// Output:
	// src1:orders:3:100-200
	// src1:eu%2Forders%3Av2:0:0-10
	// src1h: 70
}
