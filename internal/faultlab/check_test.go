package faultlab

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestOvertaker: a completion is stale when another claim's run began while
// the completing run still ran and before the completion was recorded,
// unless that claim was made on a writer whose history was discarded.
func TestOvertaker(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 18, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	own := Execution{BatchID: 1, Token: 10, Start: ms(0), End: ms(1500), Done: true}
	during := Execution{BatchID: 1, Token: 20, Start: ms(1490), End: ms(1600)}
	after := Execution{BatchID: 1, Token: 30, Start: ms(1510)}
	before := Execution{BatchID: 1, Token: 40, Start: ms(-100), End: ms(-50)}
	none := func(Execution) bool { return false }
	onDiscarded := func(e Execution) bool { return e.Token == 20 }

	e, disc := overtaker(own, []Execution{before, own, during, after}, ms(1520), none)
	require.NotNil(t, e, "a claim that began while the run ran overtook it")
	require.Equal(t, int64(20), e.Token)
	require.False(t, disc)

	e, disc = overtaker(own, []Execution{before, own, during, after}, ms(1520), onDiscarded)
	require.Nil(t, e, "a claim made on a discarded writer does not make the completion stale")
	require.True(t, disc)

	e, _ = overtaker(own, []Execution{own, during}, ms(1480), none)
	require.Nil(t, e, "a completion recorded before the other claim began is not stale")

	e, _ = overtaker(own, []Execution{own, after, before}, ms(1520), none)
	require.Nil(t, e, "runs before the run or after its end do not overtake it")

	running := own
	running.End = time.Time{}
	e, _ = overtaker(running, []Execution{running, during}, ms(1520), none)
	require.Nil(t, e)
}

// TestCarriedByKey: a completion recorded under a run's token on another
// row of the batch (the final writer's, from a re-asserted enqueue) is the
// run's own, carried over by key, only if the run finished its work
// before; the row's own claims are then no overtaking.
func TestCarriedByKey(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 20, 17, 0, 0, time.UTC)
	// The CI case at 3a9861a: run of row 405 done at .905, its completion
	// recorded on row 571 at .932, 30 ms after another claim of row 571.
	own := Execution{BatchID: 405, Created: 1, Token: 7, Start: t0.Add(-1500 * time.Millisecond), End: t0.Add(905 * time.Millisecond), Done: true}
	require.True(t, carriedByKey(own, 571, 2, t0.Add(932*time.Millisecond)))
	require.False(t, carriedByKey(own, 405, 1, t0.Add(932*time.Millisecond)), "the run's own row: fencing applies")
	require.False(t, carriedByKey(own, 571, 2, t0.Add(900*time.Millisecond)), "recorded before the run finished")
	cut := own
	cut.Done = false
	require.False(t, carriedByKey(cut, 571, 2, t0.Add(932*time.Millisecond)), "a run that did not finish its work")
}
