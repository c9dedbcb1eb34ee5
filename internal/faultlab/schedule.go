package faultlab

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Schedule is a randomized fault schedule: a pure function of its seed, duration and kinds
// (NewSchedule), so a printed seed replays it exactly. Topology faults never overlap each other;
// network and process faults may overlap them (never one of their own kind). Quiet periods, in
// which no fault starts and none runs, are followed by an invariant check.
type Schedule struct {
	Seed     int64
	Duration time.Duration
	Faults   []Fault         // by Start
	Quiet    []time.Duration // starts of the quiet periods, each QuietPeriod long
}

// Schedule parameters.
const (
	QuietPeriod       = 8 * time.Second  // long enough for a crashed worker's lease and a drain of the backlog
	scheduleWarmup    = 3 * time.Second  // load before the first fault
	scheduleTail      = 10 * time.Second // no fault starts this close to the end
	topologyOverhead  = 8 * time.Second  // a topology fault's nominal cost beyond its window (rejoin, rewind)
	faultsPerQuiet    = 3                // topology faults between quiet periods
	overlapMeanPeriod = 20 * time.Second // mean gap between two overlapping faults of one kind
)

// windowRange is the range a kind's window is drawn from.
func windowRange(k Kind) (lo, hi time.Duration) {
	switch k {
	case PlannedFailover:
		return 0, 2 * time.Second
	case StaleEndpoint:
		return time.Second, 8 * time.Second
	case ReversedFailover:
		return 500 * time.Millisecond, 3 * time.Second
	case CommitLoss:
		return 0, 5 * time.Second // slow detection (30 s / 60 s) is drawn separately
	case CommitLossFlipBack:
		return 300 * time.Millisecond, 2 * time.Second
	case NoWriter:
		return 5 * time.Second, 20 * time.Second
	case Blackhole:
		return time.Second, 10 * time.Second
	case Latency:
		return 2 * time.Second, 10 * time.Second
	case CredentialRotation:
		return 5 * time.Second, 20 * time.Second
	}
	return 0, 0
}

func draw(r *rand.Rand, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	// Whole milliseconds, so printed schedules read back exactly.
	return lo + time.Duration(r.Int64N(int64((hi-lo)/time.Millisecond)+1))*time.Millisecond
}

// NewSchedule draws a schedule of faults of the given kinds (nil: AllKinds) over d from seed.
func NewSchedule(seed int64, d time.Duration, kinds []Kind) *Schedule {
	if kinds == nil {
		kinds = AllKinds
	}
	r := rand.New(rand.NewPCG(uint64(seed), 0x6661756c746c6162)) // "faultlab"
	s := &Schedule{Seed: seed, Duration: d}
	var topo, other []Kind
	for _, k := range kinds {
		if k.Topology() {
			topo = append(topo, k)
		} else {
			other = append(other, k)
		}
	}
	end := d - scheduleTail
	// The topology lane: one fault after another, a quiet period every few.
	t := scheduleWarmup
	n := 0
	for len(topo) > 0 && t < end {
		k := topo[r.IntN(len(topo))]
		lo, hi := windowRange(k)
		w := draw(r, lo, hi)
		switch {
		case k == CommitLoss && r.IntN(2) == 0: // slow detection: the endpoint moves 30 or 60 s late
			w = []time.Duration{30 * time.Second, 60 * time.Second}[r.IntN(2)]
		case k == StaleEndpoint && r.IntN(4) == 0: // a slow endpoint move (Patroni's TTL, DNS)
			w = draw(r, 30*time.Second, 45*time.Second)
		}
		s.Faults = append(s.Faults, Fault{Kind: k, Start: t, Window: w})
		t += w + topologyOverhead + draw(r, 2*time.Second, 8*time.Second)
		if n++; n%faultsPerQuiet == 0 && t < end {
			s.Quiet = append(s.Quiet, t)
			t += QuietPeriod + time.Second
		}
	}
	if len(topo) == 0 {
		for q := scheduleWarmup + 30*time.Second; q < end; q += 30*time.Second + QuietPeriod {
			s.Quiet = append(s.Quiet, q)
		}
	}
	inQuiet := func(from, to time.Duration) (time.Duration, bool) {
		for _, q := range s.Quiet {
			if from < q+QuietPeriod && to > q {
				return q + QuietPeriod, true
			}
		}
		return 0, false
	}
	// The other lanes: one per kind, faults at exponential gaps, never in a quiet period.
	for _, k := range other {
		t := scheduleWarmup
		for {
			t += time.Duration(r.ExpFloat64()*float64(overlapMeanPeriod/time.Millisecond)) * time.Millisecond
			lo, hi := windowRange(k)
			w := draw(r, lo, hi)
			span := w
			if k == WorkerCrash || k == TerminateBackends {
				span = 10 * time.Second // the crash's lease to expire, a takeover; a recovery
			}
			for {
				after, hit := inQuiet(t, t+span)
				if !hit {
					break
				}
				t = after + time.Second
			}
			if t >= end {
				break
			}
			s.Faults = append(s.Faults, Fault{Kind: k, Start: t, Window: w})
			t += span + time.Second
		}
	}
	slices.SortStableFunc(s.Faults, func(a, b Fault) int { return int(a.Start - b.Start) })
	return s
}

// String prints the schedule, one fault a line.
func (s *Schedule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "schedule seed=%d duration=%s faults=%d quiet_periods=%d\n", s.Seed, s.Duration, len(s.Faults), len(s.Quiet))
	i, j := 0, 0
	for i < len(s.Faults) || j < len(s.Quiet) {
		if j < len(s.Quiet) && (i == len(s.Faults) || s.Quiet[j] <= s.Faults[i].Start) {
			fmt.Fprintf(&b, "  %8s quiet %s + check\n", s.Quiet[j].Round(time.Millisecond), QuietPeriod)
			j++
			continue
		}
		f := s.Faults[i]
		lane := "overlap"
		if f.Kind.Topology() {
			lane = "topology"
		}
		fmt.Fprintf(&b, "  %8s %-8s %s window=%s\n", f.Start.Round(time.Millisecond), lane, f.Kind, f.Window)
		i++
	}
	return b.String()
}
