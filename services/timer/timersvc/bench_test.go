package timersvc

import (
	"bytes"
	"context"
	"slices"
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
		tk.apply(0, gen, uid, 0, &doc, now)
	}
	return time.UnixMilli(deadline)
}

// burst loads benchTimers timers per iteration, each sending its current
// tick at once, and waits until pub has seen them all.
func burst(b *testing.B, pub msgPublisher, seen func() int64) {
	tk := newTicker(testLog(b), pub, 1, 0, func(edge) {})
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
	subscribeDevices(b, subNC, func(*nats.Msg) { got.Add(1) })
	burst(b, pubNC, got.Load)
}

type publisherFunc func(*nats.Msg) error

func (f publisherFunc) PublishMsg(m *nats.Msg) error { return f(m) }

// tickValue parses {"timer":N}.
func tickValue(data []byte) int {
	r := 0
	for _, c := range data[bytes.IndexByte(data, ':')+1:] {
		if c < '0' || c > '9' {
			break
		}
		r = r*10 + int(c-'0')
	}
	return r
}

// BenchmarkSteady10k runs 10k timers of 3 s that share one deadline (the
// worst case: 10k ticks due at the same instant every second) through
// embedded NATS and reports CPU use and how late the ticks arrive at a
// subscriber of every device subject: the first ticks (sent as the timers
// are loaded, one after the other) apart from the later ones.
func BenchmarkSteady10k(b *testing.B) {
	s := natstest.Run(b)
	pubNC, subNC := s.Conn(b), s.Conn(b)
	var (
		mu          sync.Mutex
		deadline    time.Time
		lags, first []time.Duration
		dones       int64
		pubMu       sync.Mutex
		pubLags     []time.Duration // when the ticker handed them to NATS
	)
	const dur = 3
	subscribeDevices(b, subNC, func(m *nats.Msg) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if m.Header.Get("Sb-Event") != "tick" {
			return
		}
		r := tickValue(m.Data)
		lag := now.Sub(deadline.Add(-time.Duration(r) * time.Second))
		if r == dur {
			first = append(first, lag)
		} else {
			lags = append(lags, lag)
		}
	})
	pub := publisherFunc(func(m *nats.Msg) error {
		err := pubNC.PublishMsg(m)
		if r := tickValue(m.Data); r < dur {
			lag := time.Since(deadline.Add(-time.Duration(r) * time.Second))
			pubMu.Lock()
			pubLags = append(pubLags, lag)
			pubMu.Unlock()
		}
		return err
	})
	tk := newTicker(testLog(b), pub, 1, DefaultConfig().TickBatch, func(edge) { mu.Lock(); dones++; mu.Unlock() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tk.sched.Run(ctx)
	uids := benchUsers(benchTimers)
	b.ResetTimer()
	var cpu, wall time.Duration
	for range b.N {
		mu.Lock()
		dones = 0
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
	if n := len(lags) + len(first); n != b.N*benchTimers*(dur) {
		b.Fatalf("%d ticks, want %d", n, b.N*benchTimers*dur)
	}
	slices.Sort(lags)
	slices.Sort(first)
	slices.Sort(pubLags)
	p := func(xs []time.Duration, q float64) float64 {
		return float64(xs[min(len(xs)-1, int(float64(len(xs))*q))].Microseconds()) / 1000
	}
	b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "cpu%")
	b.ReportMetric(p(first, 0.99), "first-p99-ms")
	b.ReportMetric(p(pubLags, 0.99), "sent-p99-ms")
	b.ReportMetric(p(lags, 0.5), "late-p50-ms")
	b.ReportMetric(p(lags, 0.99), "late-p99-ms")
	b.ReportMetric(p(lags, 1), "late-max-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkStartBurst sends n timerStart events at once to one instance
// on embedded NATS (as the gateway forwards them) and reports when each
// device's first tick arrives at a subscriber of every device subject.
//
// nodes=3 runs a three-node cluster of NATS processes with an R3 bucket.
func BenchmarkStartBurst(b *testing.B) {
	for _, n := range []int{2000, 10000} {
		b.Run("timers="+strconv.Itoa(n), func(b *testing.B) {
			s := natstest.Run(b)
			startBurst(b, n, s.Conn, DefaultConfig())
		})
	}
	b.Run("nodes=3/timers=2000", func(b *testing.B) {
		c := natstest.RunCluster(b, 3)
		cfg := DefaultConfig()
		cfg.Replicas = 3
		startBurst(b, 2000, c.Conn, cfg)
	})
}

func startBurst(b *testing.B, n int, conn func(testing.TB, ...nats.Option) *nats.Conn, cfg Config) {
	pubNC, subNC, svcNC := conn(b), conn(b), conn(b)
	svc, err := Start(context.Background(), testLog(b), svcNC, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = svc.Stop() })
	for t0 := time.Now(); len(svc.Status().Partitions) < cfg.Partitions; {
		if time.Since(t0) > 10*time.Second {
			b.Fatal("partitions not taken")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var (
		mu    sync.Mutex
		sent  = make(map[string]time.Time, n)
		first []time.Duration
		cpu   time.Duration
	)
	subscribeDevices(b, subNC, func(m *nats.Msg) {
		now := time.Now()
		if m.Header.Get("Sb-Event") != "tick" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if t, ok := sent[m.Subject]; ok {
			first = append(first, now.Sub(t))
			delete(sent, m.Subject)
		}
	})
	b.ResetTimer()
	for i := range b.N {
		msgs := make([]*nats.Msg, n)
		subjs := make([]string, n)
		for j := range msgs {
			uid := "u" + strconv.Itoa(i) + "-" + strconv.Itoa(j)
			m := nats.NewMsg("sb.in.timerStart")
			m.Header.Set("Sb-User", uid)
			m.Header.Set("Sb-Device", "phone")
			m.Header.Set("Sb-Socket", "s"+uid)
			m.Header.Set("Sb-Event", "timerStart")
			m.Data = []byte(`[{"dur":3}]`)
			msgs[j] = m
			subjs[j] = "sb.out.device." + uid + ".phone"
		}
		cpu0 := cpuTime()
		mu.Lock()
		now := time.Now()
		for _, subj := range subjs {
			sent[subj] = now
		}
		mu.Unlock()
		for _, m := range msgs {
			if err := pubNC.PublishMsg(m); err != nil {
				b.Fatal(err)
			}
		}
		for t0 := time.Now(); ; time.Sleep(5 * time.Millisecond) {
			mu.Lock()
			left := len(sent)
			mu.Unlock()
			if left == 0 {
				break
			}
			if time.Since(t0) > 20*time.Second {
				b.Fatalf("%d of %d timers without a first tick", left, n)
			}
		}
		cpu += cpuTime() - cpu0
	}
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(first)
	p := func(q float64) float64 {
		return float64(first[min(len(first)-1, int(float64(len(first))*q))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*n), "cpu-us/start")
	b.ReportMetric(p(0.5), "first-p50-ms")
	b.ReportMetric(p(0.99), "first-p99-ms")
	b.ReportMetric(0, "ns/op")
}

// subscribeDevices has fn receive every device delivery, without a bound
// on the subscription's pending messages, from when it returns.
func subscribeDevices(b *testing.B, nc *nats.Conn, fn nats.MsgHandler) {
	b.Helper()
	sub, err := nc.Subscribe("sb.out.device.>", fn)
	if err != nil {
		b.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		b.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
}
