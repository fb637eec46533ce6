package timersvc

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/natstest"
)

// countingPublisher counts deliveries without sending them.
type countingPublisher struct{ n atomic.Int64 }

func (p *countingPublisher) PublishMsg(*nats.Msg) error { p.n.Add(1); return nil }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

const benchTimers = 10000

func benchUsers(n int) []string {
	uids := make([]string, n)
	for i := range uids {
		uids[i] = "user" + strconv.Itoa(i)
	}
	return uids
}

// loadAll gives every user one timer with the same deadline.
func loadAll(tk *ticker, gen uint64, uids []string, dur int, now time.Time) time.Time {
	start := now.UnixMilli()
	deadline := start + int64(dur)*1000
	for _, uid := range uids {
		doc := userDoc{Timers: map[string]record{"phone": {Dur: dur, Start: start, Deadline: deadline}}}
		tk.apply(0, gen, uid, &doc, now)
	}
	return time.UnixMilli(deadline)
}

// burst loads benchTimers timers per iteration, each sending its current
// tick at once, and waits until pub has seen them all.
func burst(b *testing.B, pub msgPublisher, seen func() int64) {
	tk := newTicker(testLog(b), pub, 1, func(edge) {})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tk.sched.Run(ctx)
	uids := benchUsers(benchTimers)
	b.ResetTimer()
	cpu0, t0 := cpuTime(), time.Now()
	var want int64
	for range b.N {
		gen := tk.activate(0, 0, time.Now().Add(time.Hour))
		loadAll(tk, gen, uids, 86400, time.Now())
		want += benchTimers
		for seen() < want {
			time.Sleep(100 * time.Microsecond)
		}
		tk.deactivate(0)
	}
	elapsed, cpu := time.Since(t0), cpuTime()-cpu0
	ticks := float64(b.N * benchTimers)
	b.ReportMetric(ticks/elapsed.Seconds(), "ticks/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/ticks, "cpu-ns/tick")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkTickScheduler: index + scheduler + tick encoding, deliveries
// counted in memory (no network).
func BenchmarkTickScheduler(b *testing.B) {
	pub := &countingPublisher{}
	burst(b, pub, pub.n.Load)
}

// BenchmarkTickNATS: the same through an embedded NATS server to a
// subscriber of every device subject (CPU includes server and subscriber).
func BenchmarkTickNATS(b *testing.B) {
	s := natstest.Run(b)
	pubNC, subNC := s.Conn(b), s.Conn(b)
	var got atomic.Int64
	sub, err := subNC.Subscribe("sb.out.device.>", func(*nats.Msg) { got.Add(1) })
	if err != nil {
		b.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		b.Fatal(err)
	}
	if err := subNC.Flush(); err != nil {
		b.Fatal(err)
	}
	burst(b, pubNC, got.Load)
}

// BenchmarkSteady10k runs 10k timers of 3 s that share one deadline (the
// worst case: 10k ticks due at the same instant every second) through
// embedded NATS and reports CPU use and how late the ticks arrive.
func BenchmarkSteady10k(b *testing.B) {
	s := natstest.Run(b)
	pubNC, subNC := s.Conn(b), s.Conn(b)
	var (
		mu       sync.Mutex
		deadline time.Time
		maxLag   time.Duration
		sumLag   time.Duration
		ticks    int64
		dones    int64
	)
	sub, err := subNC.Subscribe("sb.out.device.>", func(m *nats.Msg) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if m.Header.Get("Sb-Event") != "tick" {
			dones++
			return
		}
		var r int
		if _, err := fmt.Sscanf(string(m.Data), `{"timer":%d}`, &r); err != nil {
			return
		}
		lag := now.Sub(deadline.Add(-time.Duration(r) * time.Second))
		maxLag = max(maxLag, lag)
		sumLag += lag
		ticks++
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		b.Fatal(err)
	}
	if err := subNC.Flush(); err != nil {
		b.Fatal(err)
	}
	tk := newTicker(testLog(b), pubNC, 1, func(edge) { mu.Lock(); dones++; mu.Unlock() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tk.sched.Run(ctx)
	uids := benchUsers(benchTimers)
	const dur = 3
	b.ResetTimer()
	var cpu, wall time.Duration
	for range b.N {
		mu.Lock()
		dones, ticks, maxLag, sumLag = 0, 0, 0, 0
		now := time.Now()
		deadline = time.UnixMilli(now.UnixMilli() + dur*1000)
		mu.Unlock()
		cpu0, t0 := cpuTime(), time.Now()
		gen := tk.activate(0, 0, time.Now().Add(time.Hour))
		loadAll(tk, gen, uids, dur, now)
		for {
			mu.Lock()
			d := dones
			mu.Unlock()
			if d == benchTimers {
				break
			}
			if time.Since(t0) > 10*time.Second {
				b.Fatalf("only %d of %d timers done", d, benchTimers)
			}
			time.Sleep(5 * time.Millisecond)
		}
		cpu += cpuTime() - cpu0
		wall += time.Since(t0)
		tk.deactivate(0)
	}
	mu.Lock()
	defer mu.Unlock()
	if ticks != benchTimers*dur {
		b.Fatalf("%d ticks, want %d", ticks, benchTimers*dur)
	}
	b.ReportMetric(float64(benchTimers*dur)/float64(dur), "ticks/s")
	b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "cpu%")
	b.ReportMetric(float64(maxLag.Milliseconds()), "max-lag-ms")
	b.ReportMetric(float64((sumLag / time.Duration(ticks)).Milliseconds()), "mean-lag-ms")
	b.ReportMetric(0, "ns/op")
}
