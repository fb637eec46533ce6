// Package load is Switchboard's load tool: raw Socket.IO v5 clients over
// WebSocket (so that it measures the server, and can target any Socket.IO
// server), the scenarios idle, handshake, notify, broadcast and timers,
// the server's CPU and memory read from /proc, and a report as a table
// plus one JSON line per result.
package load

import (
	"math"
	"slices"
	"sync"
	"time"
)

// Latencies collects durations; safe for concurrent use.
type Latencies struct {
	mu sync.Mutex
	xs []time.Duration
}

// Add records one duration.
func (l *Latencies) Add(d time.Duration) {
	l.mu.Lock()
	l.xs = append(l.xs, d)
	l.mu.Unlock()
}

// Reset forgets what was added.
func (l *Latencies) Reset() {
	l.mu.Lock()
	l.xs = nil
	l.mu.Unlock()
}

// Summary returns the distribution of what was added so far.
func (l *Latencies) Summary() Summary {
	l.mu.Lock()
	xs := slices.Clone(l.xs)
	l.mu.Unlock()
	return Summarize(xs)
}

// Summary is a distribution of durations.
type Summary struct {
	N                        int
	Min, Mean, P50, P90, P99 time.Duration
	Max                      time.Duration
}

// Summarize sorts xs and returns its distribution; percentiles are
// nearest-rank (the smallest value with at least p % of the values at or
// below it).
func Summarize(xs []time.Duration) Summary {
	if len(xs) == 0 {
		return Summary{}
	}
	slices.Sort(xs)
	var sum time.Duration
	for _, x := range xs {
		sum += x
	}
	return Summary{
		N: len(xs), Min: xs[0], Max: xs[len(xs)-1], Mean: sum / time.Duration(len(xs)),
		P50: Percentile(xs, 50), P90: Percentile(xs, 90), P99: Percentile(xs, 99),
	}
}

// Percentile is the nearest-rank p-th percentile (0 < p <= 100) of sorted
// xs; 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// Step is one rate tried by a stepped search and whether it met the bound.
type Step struct {
	Rate int
	Ok   bool
}

// StepSearch tries rates from start, multiplying by factor while try
// reports the bound met, up to limit (dividing by factor while it is not,
// when start itself fails), then bisects between the highest rate that met
// the bound and the lowest that did not until they are within 10 %. It
// returns the highest rate that met the bound (0 if none did, down to
// start/1000) and every step tried, in order.
func StepSearch(start, limit int, factor float64, try func(rate int) bool) (int, []Step) {
	var steps []Step
	run := func(r int) bool {
		ok := try(r)
		steps = append(steps, Step{r, ok})
		return ok
	}
	good, bad := 0, 0
	if run(start) {
		good = start
		for r := start; good < limit; {
			r = min(limit, max(r+1, int(float64(r)*factor)))
			if !run(r) {
				bad = r
				break
			}
			good = r
		}
	} else {
		bad = start
		for r := start; ; {
			r = int(float64(r) / factor)
			if r < max(1, start/1000) {
				return 0, steps
			}
			if run(r) {
				good = r
				break
			}
			bad = r
		}
	}
	for bad > 0 && float64(bad-good) > 0.1*float64(good) {
		mid := (good + bad) / 2
		if run(mid) {
			good = mid
		} else {
			bad = mid
		}
	}
	return good, steps
}
