package main

// Scale benchmark with real processes: two timer instances (this test
// binary run as the timer binary) on an embedded NATS server, N timers
// started through timerStart at a steady rate, and the devices played by a
// NATS subscriber of every device subject. It reports how late ticks arrive
// there, the first tick after timerStart, the instances' CPU and memory per
// 10k timers, and how long the ticks of a killed instance's timers pause
// after kill -9.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/subject"
	"github.com/switchboard-rt/switchboard/services/timer/timersvc"
)

const (
	// scaleStartRate is the pace of timerStart requests (per second).
	scaleStartRate = 2500
	// scaleWindow is how long the steady state is measured.
	scaleWindow = 6 * time.Second
)

func BenchmarkScale(b *testing.B) {
	sizes := []int{10000, 50000, 100000}
	if testing.Short() {
		sizes = []int{10000, 100000} // make bench: the ends only
	}
	for _, n := range sizes {
		b.Run("timers="+strconv.Itoa(n), func(b *testing.B) {
			for range b.N {
				runScale(b, n)
			}
		})
	}
}

// arrival is one delivery seen by the devices' subscriber.
type arrival struct {
	dev   int32 // index in the devices
	value int32 // tick value, -1 for timerDone
	at    int64 // Unix ns
}

// sink records the deliveries of every device subject; two connections in
// one queue group share the decoding.
type sink struct {
	index map[string]int32 // device subject -> device index (read-only)
	parts [][]arrival      // one per subscription, read after stop
	subs  []*nats.Subscription
}

func (c *cluster) sink(devs []*device) *sink {
	c.t.Helper()
	s := &sink{index: make(map[string]int32, len(devs))}
	for i, d := range devs {
		subj, err := subject.OutDevice(d.uid, d.dev)
		if err != nil {
			c.t.Fatal(err)
		}
		s.index[subj] = int32(i)
	}
	s.parts = make([][]arrival, 2)
	// Sized for the whole run, so that no append copies arrivals while
	// latency is measured: the ticks while the timers start (at
	// scaleStartRate), then some 20 s of every timer ticking.
	expected := len(devs) * (len(devs)/scaleStartRate/2 + 20)
	for slot := range s.parts {
		nc := c.conn(c.t)
		s.parts[slot] = make([]arrival, 0, expected/len(s.parts))
		sub, err := nc.QueueSubscribe("sb.out.device.>", "measure", func(m *nats.Msg) {
			now := time.Now().UnixNano()
			i, ok := s.index[m.Subject]
			if !ok {
				return
			}
			v := int32(-1)
			if m.Header.Get(api.HeaderEvent) == api.EventTick {
				v = int32(tickValue(m.Data))
			}
			s.parts[slot] = append(s.parts[slot], arrival{i, v, now})
		})
		if err != nil {
			c.t.Fatal(err)
		}
		_ = sub.SetPendingLimits(-1, -1)
		if err := nc.Flush(); err != nil {
			c.t.Fatal(err)
		}
		s.subs = append(s.subs, sub)
	}
	return s
}

// stop drains the subscriptions; the arrivals can be read after it.
func (s *sink) stop(t testing.TB) []arrival {
	for _, sub := range s.subs {
		_ = sub.Drain()
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, sub := range s.subs {
		for sub.IsValid() {
			if time.Now().After(deadline) {
				t.Fatal("subscriber did not drain")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	var all []arrival
	for _, p := range s.parts {
		all = append(all, p...)
	}
	slices.SortFunc(all, func(a, b arrival) int { return cmp.Compare(a.at, b.at) })
	return all
}

// tickValue parses {"timer":N}.
func tickValue(b []byte) int {
	i := bytes.IndexByte(b, ':')
	n := 0
	for _, ch := range b[i+1:] {
		if ch < '0' || ch > '9' {
			break
		}
		n = n*10 + int(ch-'0')
	}
	return n
}

// startPaced starts one timer per device at scaleStartRate and returns when
// each request was sent and when its ack came (Unix ns).
func (c *cluster) startPaced(devs []*device) (sent, acked []int64) {
	c.t.Helper()
	nc := c.conn(c.t)
	subj, _ := subject.In(api.EventTimerStart)
	sent, acked = make([]int64, len(devs)), make([]int64, len(devs))
	work := make(chan int, 1024)
	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 256 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				d := devs[i]
				m := nats.NewMsg(subj)
				m.Header.Set(api.HeaderUser, d.uid)
				m.Header.Set(api.HeaderDevice, d.dev)
				m.Header.Set(api.HeaderEvent, api.EventTimerStart)
				m.Data = fmt.Appendf(nil, `[{"dur":%d}]`, d.dur)
				sent[i] = time.Now().UnixNano()
				reply, err := nc.RequestMsg(m, 10*time.Second)
				acked[i] = time.Now().UnixNano()
				if err == nil && !bytes.Contains(reply.Data, []byte(`"ok"`)) {
					err = fmt.Errorf("reply %s", reply.Data)
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	const step = 10 * time.Millisecond
	perStep := scaleStartRate * int(step) / int(time.Second)
	next := time.Now()
	for i := 0; i < len(devs); {
		for j := 0; j < perStep && i < len(devs); j++ {
			work <- i
			i++
		}
		next = next.Add(step)
		time.Sleep(time.Until(next))
	}
	close(work)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		c.t.Fatalf("%d of %d timerStart failed, first: %v", n, len(devs), firstErr.Load())
	}
	return sent, acked
}

// deadlines reads every device's deadline from the timer bucket.
func (c *cluster) deadlines(devs []*device) {
	c.t.Helper()
	js, err := jetstream.New(c.nc)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv, err := js.KeyValue(ctx, timersvc.DefaultConfig().Bucket)
	if err != nil {
		c.t.Fatal(err)
	}
	w, err := kv.Watch(ctx, "t.>", jetstream.IgnoreDeletes())
	if err != nil {
		c.t.Fatal(err)
	}
	defer func() { _ = w.Stop() }()
	docs := map[string]map[string]struct {
		Deadline int64 `json:"deadline"`
	}{}
	for e := range w.Updates() {
		if e == nil {
			break
		}
		var doc struct {
			Timers map[string]struct {
				Deadline int64 `json:"deadline"`
			} `json:"timers"`
		}
		if err := json.Unmarshal(e.Value(), &doc); err != nil {
			c.t.Fatal(err)
		}
		docs[e.Key()] = doc.Timers
	}
	n := timersvc.DefaultConfig().Partitions
	for _, d := range devs {
		tok, _ := subject.KeyToken(d.uid)
		key := "t." + strconv.Itoa(timersvc.PartitionOf(d.uid, n)) + "." + tok
		r, ok := docs[key][d.dev]
		if !ok {
			c.t.Fatalf("no timer of %s/%s in the bucket", d.uid, d.dev)
		}
		d.deadline = time.UnixMilli(r.Deadline)
	}
}

// procStat is a process's CPU time so far and resident memory.
func procStat(t testing.TB, pid int) (cpu time.Duration, rss int64) {
	t.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name (which may hold spaces): state is the
	// 3rd field, utime the 14th, stime the 15th.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	cpu = time.Duration(ut+st) * time.Second / 100 // USER_HZ
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			rss = kb * 1024
		}
	}
	return cpu, rss
}

// selfCPU is this process's CPU time so far (the devices' subscriber).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// tickLateness sums the instances' tick lateness histograms.
func (c *cluster) tickLateness() []uint64 {
	c.t.Helper()
	out := make([]uint64, len(api.TickLatenessBounds)+1)
	for _, st := range c.status() {
		for i, n := range st.TickLateness {
			out[i] += n
		}
	}
	return out
}

// histPct is the bucket bound under which the p-th percentile of a tick
// lateness histogram falls.
func histPct(h []uint64, p float64) time.Duration {
	var total uint64
	for _, n := range h {
		total += n
	}
	var acc uint64
	for i, n := range h {
		acc += n
		if float64(acc) >= float64(total)*p/100 {
			if i < len(api.TickLatenessBounds) {
				return api.TickLatenessBounds[i]
			}
			return time.Hour
		}
	}
	return 0
}

// startOne starts d's timer and returns when the request was sent.
func (c *cluster) startOne(d *device) int64 {
	c.t.Helper()
	subj, _ := subject.In(api.EventTimerStart)
	m := nats.NewMsg(subj)
	m.Header.Set(api.HeaderUser, d.uid)
	m.Header.Set(api.HeaderDevice, d.dev)
	m.Header.Set(api.HeaderEvent, api.EventTimerStart)
	m.Data = fmt.Appendf(nil, `[{"dur":%d}]`, d.dur)
	at := time.Now().UnixNano()
	if reply, err := c.nc.RequestMsg(m, 5*time.Second); err != nil || !bytes.Contains(reply.Data, []byte(`"ok"`)) {
		c.t.Fatalf("probe timerStart: %v", err)
	}
	return at
}

// pct returns the p-th percentile of sorted xs.
func pct(xs []time.Duration, p float64) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	return xs[min(len(xs)-1, int(float64(len(xs))*p/100))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func runScale(b *testing.B, n int) {
	// NATS runs as its own process, as it does in production: its
	// garbage collection and the subscriber's do not share a heap.
	ns := natstest.RunCluster(b, 1)
	c := newClusterOn(b, ns.URL(0), func(t testing.TB) *nats.Conn { return ns.Conn(t) })
	prof := os.Getenv("SCALE_PROFILE") // a directory: CPU profiles of the steady window
	var kids []*child
	for i := range 2 {
		if prof != "" {
			c.env = []string{"SB_OPS_PPROF=true", fmt.Sprintf("SB_OPS_LISTEN=127.0.0.1:%d", 16061+i)}
		}
		kids = append(kids, c.start())
	}
	c.waitCovered(15 * time.Second)
	// Idle: the leases and memberships alone.
	idleRSS := make([]int64, len(kids))
	var idleCPU time.Duration
	idleFrom := time.Now()
	for _, k := range kids {
		c0, _ := procStat(b, k.cmd.Process.Pid)
		idleCPU -= c0
	}
	time.Sleep(3 * time.Second)
	for i, k := range kids {
		c1, r := procStat(b, k.cmd.Process.Pid)
		idleCPU += c1
		idleRSS[i] = r
	}
	idleTook := time.Since(idleFrom)
	// 2 devices per user, 90 to 149 s: nothing ends during the run.
	devs := makeDevices(n/2, 2, 90, 60)
	// Probes: timers started one by one during the steady window, while
	// all the others tick, to time their first tick.
	probes := make([]*device, 100)
	for i := range probes {
		probes[i] = &device{uid: fmt.Sprintf("probe-%d", i), dev: "p", dur: 60}
	}
	snk := c.sink(append(slices.Clone(devs), probes...))
	t0 := time.Now()
	sent, acked := c.startPaced(devs)
	startTook := time.Since(t0)
	c.deadlines(devs)

	// Steady state: every timer running, none starting.
	time.Sleep(time.Second)
	winFrom := time.Now()
	self0 := selfCPU()
	nats0, _ := procStat(b, ns.PID(0))
	cpu0 := make([]time.Duration, len(kids))
	for i, k := range kids {
		cpu0[i], _ = procStat(b, k.cmd.Process.Pid)
	}
	late0 := c.tickLateness()
	var profs sync.WaitGroup
	if prof != "" {
		for i := range kids {
			profs.Go(func() {
				saveProfile(b, fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=8", 16061+i), fmt.Sprintf("%s/timer-%d.pprof", prof, i))
			})
		}
	}
	probeSent := make([]int64, len(probes))
	pace := scaleWindow / time.Duration(len(probes)+1)
	for i := range probes {
		time.Sleep(pace)
		probeSent[i] = c.startOne(probes[i])
	}
	time.Sleep(time.Until(winFrom.Add(scaleWindow)))
	winTo := time.Now()
	profs.Wait()
	harness := selfCPU() - self0
	nats1, _ := procStat(b, ns.PID(0))
	late := c.tickLateness()
	for i := range late {
		late[i] -= late0[i]
	}
	var cpu time.Duration
	var rss int64
	for i, k := range kids {
		c1, r := procStat(b, k.cmd.Process.Pid)
		cpu += c1 - cpu0[i]
		rss += r - idleRSS[i]
	}

	// kill -9 of one instance; its timers' ticks pause until the other one
	// has taken over their partitions.
	st := c.status()
	victim := kids[0]
	affected := map[int]bool{}
	for _, p := range st[victim.name].Partitions {
		affected[p] = true
	}
	killAt := time.Now()
	c.signal(victim, syscall.SIGKILL)
	time.Sleep(3 * time.Second)
	all := snk.stop(b)

	// Lateness of the steady state's ticks at the subscriber.
	var lags []time.Duration
	first := make([]int64, len(devs))
	// The last value before the kill and the first after it, per device.
	before, after := make([]int32, len(devs)), make([]int32, len(devs))
	probeFirst := make([]int64, len(probes))
	for _, a := range all {
		if int(a.dev) >= len(devs) {
			if i := int(a.dev) - len(devs); probeFirst[i] == 0 {
				probeFirst[i] = a.at
			}
			continue
		}
		d := devs[a.dev]
		if first[a.dev] == 0 {
			first[a.dev] = a.at
		}
		if a.value > 0 {
			if a.at <= killAt.UnixNano() {
				before[a.dev] = a.value
			} else if after[a.dev] == 0 {
				after[a.dev] = a.value
			}
		}
		if a.value <= 0 || a.at < winFrom.UnixNano() || a.at > winTo.UnixNano() {
			continue
		}
		due := d.deadline.Add(-time.Duration(a.value) * time.Second)
		lags = append(lags, time.Unix(0, a.at).Sub(due))
	}
	slices.Sort(lags)
	var firsts, acks, gaps []time.Duration
	for i, d := range devs {
		if first[i] == 0 {
			b.Fatalf("%s/%s never ticked", d.uid, d.dev)
		}
		firsts = append(firsts, time.Duration(first[i]-sent[i]))
		acks = append(acks, time.Duration(acked[i]-sent[i]))
		if !affected[timersvc.PartitionOf(d.uid, timersvc.DefaultConfig().Partitions)] {
			continue
		}
		if after[i] == 0 || after[i] >= before[i] {
			b.Fatalf("%s/%s: %d before the kill, %d after it", d.uid, d.dev, before[i], after[i])
		}
		// The ticks missed: from before-1 down to after+1; the gap ends
		// with the due time of the last of them.
		gap := time.Duration(0)
		if after[i] < before[i]-1 {
			gap = d.deadline.Add(-time.Duration(after[i]+1) * time.Second).Sub(killAt)
		}
		gaps = append(gaps, gap)
	}
	slices.Sort(firsts)
	slices.Sort(acks)
	var probeFirsts []time.Duration
	for i, at := range probeFirst {
		if at == 0 {
			b.Fatalf("probe %d never ticked", i)
		}
		probeFirsts = append(probeFirsts, time.Duration(at-probeSent[i]))
	}
	slices.Sort(probeFirsts)
	slices.Sort(gaps)
	if want := n * int(scaleWindow/time.Second); len(lags) < want*9/10 {
		b.Fatalf("%d ticks in the %s window, want about %d", len(lags), scaleWindow, want)
	}
	per10k := float64(n) / 10000
	b.ReportMetric(float64(n)/startTook.Seconds(), "starts/s")
	b.ReportMetric(ms(pct(firsts, 50)), "first-p50-ms")
	b.ReportMetric(ms(pct(firsts, 99)), "first-p99-ms")
	b.ReportMetric(ms(pct(probeFirsts, 50)), "steady-first-p50-ms")
	b.ReportMetric(ms(pct(probeFirsts, 99)), "steady-first-p99-ms")
	b.ReportMetric(ms(histPct(late, 50)), "sent-p50-ms<=")
	b.ReportMetric(ms(histPct(late, 99)), "sent-p99-ms<=")
	b.ReportMetric(ms(pct(acks, 99)), "ack-p99-ms")
	b.ReportMetric(ms(pct(lags, 50)), "late-p50-ms")
	b.ReportMetric(ms(pct(lags, 99)), "late-p99-ms")
	b.ReportMetric(ms(lags[len(lags)-1]), "late-max-ms")
	b.ReportMetric(100*idleCPU.Seconds()/idleTook.Seconds(), "idle-cpu%")
	b.ReportMetric(100*harness.Seconds()/winTo.Sub(winFrom).Seconds(), "sub-cpu%")
	b.ReportMetric(100*(nats1-nats0).Seconds()/winTo.Sub(winFrom).Seconds(), "nats-cpu%")
	b.ReportMetric(100*cpu.Seconds()/winTo.Sub(winFrom).Seconds()/per10k, "cpu%/10k")
	b.ReportMetric(float64(rss)/(1<<20)/per10k, "MB/10k")
	b.ReportMetric(ms(gaps[len(gaps)-1]), "missed-until-ms")
	b.ReportMetric(0, "ns/op")
}

// saveProfile writes what url serves to path.
func saveProfile(t testing.TB, url, path string) {
	resp, err := http.Get(url)
	if err != nil {
		t.Errorf("profile: %v", err)
		return
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err == nil {
		err = os.WriteFile(path, data, 0o644)
	}
	if err != nil {
		t.Errorf("profile: %v", err)
	}
}
