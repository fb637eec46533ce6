package load

import (
	"os"
	"runtime"
	"slices"
	"testing"
	"time"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = ms(i + 1)
	}
	for _, tc := range []struct {
		name string
		xs   []time.Duration
		p    float64
		want time.Duration
	}{
		{"none", nil, 99, 0},
		{"one", []time.Duration{ms(7)}, 50, ms(7)},
		{"one p99", []time.Duration{ms(7)}, 99, ms(7)},
		{"median of two", []time.Duration{ms(1), ms(2)}, 50, ms(1)},
		{"p100 is the max", hundred, 100, ms(100)},
		{"p99 of 100", hundred, 99, ms(99)},
		{"p50 of 100", hundred, 50, ms(50)},
		{"p1 of 100", hundred, 1, ms(1)},
		{"p0.1 of 100 is the min", hundred, 0.1, ms(1)},
		{"p90 of 10", hundred[:10], 90, ms(9)},
		{"p99 of 10 is the max", hundred[:10], 99, ms(10)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Percentile(tc.xs, tc.p); got != tc.want {
				t.Errorf("Percentile(p%v) = %v, want %v", tc.p, got, tc.want)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	xs := []time.Duration{ms(5), ms(1), ms(3), ms(2), ms(4)}
	s := Summarize(slices.Clone(xs))
	want := Summary{N: 5, Min: ms(1), Mean: ms(3), P50: ms(3), P90: ms(5), P99: ms(5), Max: ms(5)}
	if s != want {
		t.Fatalf("Summarize = %+v, want %+v", s, want)
	}
	if (Summarize(nil) != Summary{}) {
		t.Fatal("empty summary not zero")
	}
	var l Latencies
	for _, x := range xs {
		l.Add(x)
	}
	if got := l.Summary(); got != want {
		t.Fatalf("Latencies.Summary = %+v, want %+v", got, want)
	}
}

func TestStepSearch(t *testing.T) {
	for _, tc := range []struct {
		name       string
		start, lim int
		capacity   int // rates up to this meet the bound
		want       int
		maxSteps   int
	}{
		{"start fails: steps down, then bisects", 1000, 100000, 500, 500, 6},
		{"nothing passes", 1000, 100000, 0, 0, 11},
		{"every step passes up to the limit", 1000, 8000, 1 << 30, 8000, 4},
		{"bisects to within 10 %", 1000, 1 << 20, 5000, 0, 12},
		{"capacity on a step", 1000, 1 << 20, 4000, 4000, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, steps := StepSearch(tc.start, tc.lim, 2, func(r int) bool { return r <= tc.capacity })
			if len(steps) > tc.maxSteps {
				t.Errorf("%d steps: %v", len(steps), steps)
			}
			for _, s := range steps {
				if s.Ok != (s.Rate <= tc.capacity) {
					t.Errorf("step %+v recorded wrongly", s)
				}
			}
			if tc.want != 0 || tc.capacity < tc.start {
				if got != tc.want {
					t.Fatalf("found %d, want %d (steps %v)", got, tc.want, steps)
				}
				return
			}
			if got > tc.capacity || float64(got) < 0.9*float64(tc.capacity) {
				t.Fatalf("found %d for a capacity of %d (steps %v)", got, tc.capacity, steps)
			}
		})
	}
}

// The tool reads its own process the way it reads a server's.
func TestReadUsage(t *testing.T) {
	a, err := ReadUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	spin := time.Now()
	for time.Since(spin) < 200*time.Millisecond {
	}
	b, err := ReadUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if b.RSS < 64<<20 {
		t.Errorf("RSS %d bytes with 64 MiB in use", b.RSS)
	}
	if share := CPUShare(a, b); share < 30 || share > 250 {
		t.Errorf("CPU share %.0f %% while spinning", share)
	}
	runtime.KeepAlive(buf)
	if _, err := ReadUsage(1 << 30); err == nil {
		t.Error("no error for a process that does not exist")
	}
}
