package queue

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Many wake-ups of a queue within the interval send one at once and one at
// the end of the interval; Close sends what is pending.
func TestWakeCoalescer(t *testing.T) {
	var mu sync.Mutex
	var sent [][]string
	got := make(chan struct{}, 100)
	w := newWakeCoalescer(time.Hour, func(qs []string) {
		mu.Lock()
		slices.Sort(qs)
		sent = append(sent, qs)
		mu.Unlock()
		got <- struct{}{}
	})
	for i := 0; i < 100; i++ {
		w.wake([]string{"a"})
	}
	w.wake([]string{"b", "a"})
	mu.Lock()
	require.Equal(t, [][]string{{"a"}, {"b"}}, sent, "the first wake-up of each queue goes at once")
	mu.Unlock()
	w.close() // the hour-long interval has not passed: Close sends the rest
	mu.Lock()
	require.Equal(t, [][]string{{"a"}, {"b"}, {"a"}}, sent)
	mu.Unlock()
	w.wake([]string{"c"})
	mu.Lock()
	require.Len(t, sent, 3, "nothing after close")
	mu.Unlock()

	// With a short interval the trailing wake-up comes from the timer.
	sent = nil
	w = newWakeCoalescer(10*time.Millisecond, func(qs []string) {
		mu.Lock()
		sent = append(sent, qs)
		mu.Unlock()
		got <- struct{}{}
	})
	for len(got) > 0 {
		<-got
	}
	w.wake([]string{"q"})
	w.wake([]string{"q"})
	w.wake([]string{"q"})
	for i := 0; i < 2; i++ {
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			t.Fatal("no trailing wake-up")
		}
	}
	w.close()
	mu.Lock()
	require.Equal(t, [][]string{{"q"}, {"q"}}, sent)
	mu.Unlock()
}
