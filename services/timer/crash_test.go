package main

// Failure tests with real processes: the test binary runs itself as the
// timer binary (TIMER_TEST_CHILD=1), so instances can be killed with SIGKILL,
// paused with SIGSTOP and stopped with SIGTERM, while the test plays the
// devices (a subscriber of every device subject) against an embedded NATS.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
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

func TestMain(m *testing.M) {
	natstest.ServeIfChild()
	if os.Getenv("TIMER_TEST_CHILD") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// child is one timer instance process.
type child struct {
	name string
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan struct{}
}

type cluster struct {
	t    testing.TB
	url  string                      // of the NATS server (or cluster)
	conn func(testing.TB) *nats.Conn // a new connection to it
	env  []string                    // extra settings of every instance
	nc   *nats.Conn
	mu   sync.Mutex
	kids map[string]*child
	n    int
}

func newCluster(t testing.TB) *cluster {
	s := natstest.Run(t)
	return newClusterOn(t, s.URL(), func(t testing.TB) *nats.Conn { return s.Conn(t) })
}

// newClusterOn runs the instances against the NATS server(s) at url.
func newClusterOn(t testing.TB, url string, conn func(testing.TB) *nats.Conn) *cluster {
	c := &cluster{t: t, url: url, conn: conn, nc: conn(t), kids: map[string]*child{}}
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, k := range c.kids {
			_ = k.cmd.Process.Signal(syscall.SIGCONT)
			_ = k.cmd.Process.Kill()
			<-k.done
		}
	})
	return c
}

// start runs a new instance.
func (c *cluster) start() *child {
	c.t.Helper()
	c.mu.Lock()
	c.n++
	name := fmt.Sprintf("timer-%d", c.n)
	c.mu.Unlock()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "TIMER_TEST_CHILD=1", "SB_NATS_URL="+c.url, "SB_TIMER_INSTANCE="+name, "SB_LOG_LEVEL=warn", "SB_OPS_LISTEN=")
	cmd.Env = append(cmd.Env, c.env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	k := &child{name: name, cmd: cmd, out: &out, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(k.done) }()
	c.mu.Lock()
	c.kids[name] = k
	c.mu.Unlock()
	return k
}

// kill sends sig and, for SIGKILL and SIGTERM, waits for the exit.
func (c *cluster) signal(k *child, sig syscall.Signal) {
	c.t.Helper()
	if err := k.cmd.Process.Signal(sig); err != nil {
		c.t.Fatalf("signal %s: %v", k.name, err)
	}
	if sig != syscall.SIGKILL && sig != syscall.SIGTERM {
		return
	}
	select {
	case <-k.done:
	case <-time.After(10 * time.Second):
		c.t.Fatalf("%s did not exit on %s", k.name, sig)
	}
	if sig == syscall.SIGTERM && k.cmd.ProcessState.ExitCode() != 0 {
		c.t.Errorf("%s exited %d on SIGTERM:\n%s", k.name, k.cmd.ProcessState.ExitCode(), k.out.String())
	}
	c.mu.Lock()
	delete(c.kids, k.name)
	c.mu.Unlock()
}

// status asks every instance for its status (micro stats).
func (c *cluster) status() map[string]api.TimerStatus {
	c.t.Helper()
	inbox := c.nc.NewRespInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		c.t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	// On a cluster the inbox's interest must reach the other nodes first.
	if err := c.nc.Flush(); err != nil {
		c.t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if err := c.nc.PublishRequest("$SRV.STATS."+timersvc.ServiceName, inbox, nil); err != nil {
		c.t.Fatal(err)
	}
	out := map[string]api.TimerStatus{}
	for {
		m, err := sub.NextMsg(300 * time.Millisecond)
		if err != nil {
			return out
		}
		var st struct {
			Endpoints []struct {
				Data api.TimerStatus `json:"data"`
			} `json:"endpoints"`
		}
		if err := json.Unmarshal(m.Data, &st); err != nil {
			c.t.Fatalf("stats %s: %v", m.Data, err)
		}
		if len(st.Endpoints) == 0 {
			continue // an instance still starting: its endpoints come next
		}
		out[st.Endpoints[0].Data.Instance] = st.Endpoints[0].Data
	}
}

// waitCovered waits until the running instances drive every partition
// once, each instance some.
func (c *cluster) waitCovered(within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		st := c.status()
		c.mu.Lock()
		want := len(c.kids)
		c.mu.Unlock()
		seen := map[int]int{}
		ok := len(st) == want
		for _, s := range st {
			ok = ok && len(s.Partitions) > 0
			for _, p := range s.Partitions {
				seen[p]++
			}
		}
		if ok && len(seen) == timersvc.DefaultConfig().Partitions && !slices.ContainsFunc(slices.Collect(maps.Values(seen)), func(n int) bool { return n != 1 }) {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("partitions not shared by %d instances: %+v", want, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ownerOf is the running instance that drives uid's partition.
func (c *cluster) ownerOf(uid string) *child {
	c.t.Helper()
	p := timersvc.PartitionOf(uid, timersvc.DefaultConfig().Partitions)
	for name, st := range c.status() {
		if slices.Contains(st.Partitions, p) {
			c.mu.Lock()
			k := c.kids[name]
			c.mu.Unlock()
			if k != nil {
				return k
			}
		}
	}
	c.t.Fatalf("no instance drives partition %d", p)
	return nil
}

// device is one timer's device as the test sees it.
type device struct {
	uid, dev string
	dur      int
	deadline time.Time
}

type recv struct {
	event string
	value int
	at    time.Time
}

// recorder keeps every delivery of every device subject.
type recorder struct {
	mu  sync.Mutex
	got map[string][]recv
}

func (c *cluster) record() *recorder {
	c.t.Helper()
	r := &recorder{got: map[string][]recv{}}
	sub, err := c.nc.Subscribe("sb.out.device.>", func(m *nats.Msg) {
		var v struct {
			Timer int `json:"timer"`
		}
		_ = json.Unmarshal(m.Data, &v)
		r.mu.Lock()
		r.got[m.Subject] = append(r.got[m.Subject], recv{m.Header.Get(api.HeaderEvent), v.Timer, time.Now()})
		r.mu.Unlock()
	})
	if err != nil {
		c.t.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := c.nc.Flush(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = sub.Unsubscribe() })
	return r
}

// startTimers starts one timer per device, spread over spread, and reads
// back their deadlines.
func (c *cluster) startTimers(devs []*device, spread time.Duration) {
	c.t.Helper()
	subj, _ := subject.In(api.EventTimerStart)
	for i, d := range devs {
		m := nats.NewMsg(subj)
		m.Header.Set(api.HeaderUser, d.uid)
		m.Header.Set(api.HeaderDevice, d.dev)
		m.Header.Set(api.HeaderEvent, api.EventTimerStart)
		m.Data = fmt.Appendf(nil, `[{"dur":%d}]`, d.dur)
		reply, err := c.nc.RequestMsg(m, 5*time.Second)
		if err != nil || !bytes.Contains(reply.Data, []byte(`"ok"`)) {
			c.t.Fatalf("timerStart %d: %v %s", i, err, replyData(reply))
		}
		time.Sleep(spread / time.Duration(len(devs)))
	}
	users := map[string][]*device{}
	for _, d := range devs {
		users[d.uid] = append(users[d.uid], d)
	}
	for uid, ds := range users {
		req, _ := json.Marshal(api.TimerListRequest{UserID: uid})
		reply, err := c.nc.Request(subject.TimerListAPI, req, 5*time.Second)
		if err != nil {
			c.t.Fatal(err)
		}
		var list api.TimerListReply
		if err := json.Unmarshal(reply.Data, &list); err != nil {
			c.t.Fatal(err)
		}
		for _, d := range ds {
			for _, ti := range list.Timers {
				if ti.DeviceID == d.dev {
					d.deadline = ti.Deadline
				}
			}
			if d.deadline.IsZero() {
				c.t.Fatalf("no deadline for %s/%s in %+v", uid, d.dev, list)
			}
		}
	}
}

func replyData(m *nats.Msg) string {
	if m == nil {
		return ""
	}
	return string(m.Data)
}

func makeDevices(users, perUser, minDur, spanDur int) []*device {
	var devs []*device
	for u := range users {
		for d := range perUser {
			i := u*perUser + d
			devs = append(devs, &device{uid: fmt.Sprintf("user-%d", u), dev: fmt.Sprintf("dev-%d", d), dur: minDur + i%spanDur})
		}
	}
	return devs
}

// window is a stretch of time in which ticks may be missing (a failover).
type window struct{ from, to time.Time }

// failureWindow is the stretch around a failure at at in which ticks may be
// missing: from lateTol before it (a tick due just before the failure may
// not have left yet) to the failover promise after it.
func failureWindow(at time.Time) window { return window{at.Add(-lateTol), at.Add(failover)} }

// earlyTol is how early a tick may arrive before its due time (clock
// reading in two processes); lateTol how late a tick may be outside
// failover windows.
const (
	earlyTol = 50 * time.Millisecond
	lateTol  = 500 * time.Millisecond
	// failover is the promise: ticks are missed only within this time of a
	// failure, and every `0` lands within edgeLate of its deadline.
	failover = 2 * time.Second
	edgeLate = 2500 * time.Millisecond
)

// check asserts, for every device: one `0` and one timerDone, timerDone
// right after the `0` and nothing after it, within edgeLate of the
// deadline; values only go down, each on its place of the grid (never a
// wrong value); a value is missing only when its due time falls in a
// failure window. It returns the number of missed ticks.
func (r *recorder) check(t *testing.T, devs []*device, windows []window) int {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	missed := 0
	inWindow := func(at time.Time) bool {
		for _, w := range windows {
			if !at.Before(w.from) && !at.After(w.to) {
				return true
			}
		}
		return false
	}
	bad := 0
	for _, d := range devs {
		subj, _ := subject.OutDevice(d.uid, d.dev)
		got := r.got[subj]
		fail := func(format string, a ...any) {
			bad++
			if bad <= 10 {
				t.Errorf("%s/%s (dur %d, deadline %s): %s; got %s", d.uid, d.dev, d.dur, d.deadline.Format("15:04:05.000"), fmt.Sprintf(format, a...), show(got, d.deadline))
			}
		}
		if len(got) < 2 || got[len(got)-1].event != api.EventTimerDone || got[len(got)-2].event != api.EventTick || got[len(got)-2].value != 0 {
			fail("does not end with 0 then timerDone")
			continue
		}
		if n := countEvent(got, api.EventTimerDone); n != 1 {
			fail("%d timerDone", n)
			continue
		}
		// A deadline inside a failure window may see its edge late up to
		// the window's end (plus edgeLate).
		limit := d.deadline.Add(edgeLate)
		for _, w := range windows {
			if !d.deadline.Before(w.from) && !d.deadline.After(w.to) {
				limit = w.to.Add(edgeLate)
			}
		}
		if at := got[len(got)-1].at; at.After(limit) {
			fail("timerDone %s after the deadline", at.Sub(d.deadline))
		}
		prev := d.dur + 1
		for _, x := range got[:len(got)-1] {
			if x.event != api.EventTick {
				fail("%s before the end", x.event)
				break
			}
			if x.value >= prev {
				fail("tick %d after %d", x.value, prev)
				break
			}
			due := d.deadline.Add(-time.Duration(x.value) * time.Second)
			if x.at.Before(due.Add(-earlyTol)) {
				fail("tick %d %s before its due time", x.value, due.Sub(x.at))
				break
			}
			tol := lateTol
			if x.value == 0 {
				tol = edgeLate // the edge goes through the events stream
			}
			if x.at.After(due.Add(tol)) && !inWindow(due) {
				fail("tick %d %s late", x.value, x.at.Sub(due))
				break
			}
			for v := prev - 1; v > x.value; v-- {
				missed++
				if at := d.deadline.Add(-time.Duration(v) * time.Second); !inWindow(at) {
					fail("tick %d (due %s) missing outside any failover window", v, at.Format("15:04:05.000"))
				}
			}
			prev = x.value
		}
	}
	return missed
}

func countEvent(got []recv, ev string) int {
	n := 0
	for _, x := range got {
		if x.event == ev {
			n++
		}
	}
	return n
}

func show(got []recv, deadline time.Time) string {
	var b strings.Builder
	for _, x := range got {
		fmt.Fprintf(&b, "%s:%d@%+dms ", x.event, x.value, x.at.Sub(deadline).Milliseconds())
	}
	return b.String()
}

// doneEvents counts the timerDone events for backend services per device
// (the stream's per-subject message counts).
func (c *cluster) doneEvents(devs []*device) {
	c.t.Helper()
	js, err := jetstream.New(c.nc)
	if err != nil {
		c.t.Fatal(err)
	}
	var count map[string]uint64
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := js.Stream(ctx, timersvc.DefaultConfig().EventsStream)
		if err == nil {
			var info *jetstream.StreamInfo
			info, err = st.Info(ctx, jetstream.WithSubjectFilter("sb.timer.event.done.>"))
			if err == nil {
				count = info.State.Subjects
			}
		}
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("events stream: %v", err)
		}
		time.Sleep(200 * time.Millisecond) // a cluster may still be electing
	}
	for _, d := range devs {
		subj, _ := subject.TimerEvent(subject.TimerDone, d.uid, d.dev)
		if count[subj] != 1 {
			c.t.Errorf("%s/%s: %d timerDone events for services, want 1", d.uid, d.dev, count[subj])
		}
	}
}

// waitDeadlines waits until every timer is past its deadline plus slack.
func waitDeadlines(devs []*device, slack time.Duration) {
	last := time.Time{}
	for _, d := range devs {
		if d.deadline.After(last) {
			last = d.deadline
		}
	}
	time.Sleep(time.Until(last.Add(slack)))
}

// nextDeadline returns the device whose deadline comes first after from.
func nextDeadline(devs []*device, from time.Time) *device {
	sorted := slices.Clone(devs)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].deadline.Before(sorted[j].deadline) })
	for _, d := range sorted {
		if d.deadline.After(from) {
			return d
		}
	}
	return nil
}

// Three instances, 300 timers of 6 to 15 s (100 users × 3 devices), and
// SIGKILL of an instance that drives partitions mid-countdown, right at a
// timer's 0 and just after one (between its 0 and its removal), plus an
// instance paused with SIGSTOP for 3 s; after each failure a new instance
// joins. Every timer ends with exactly one 0 and one timerDone, on time,
// with no wrong or repeated value and ticks missing only in failover
// windows.
func TestKill9(t *testing.T) {
	c := newCluster(t)
	for range 3 {
		c.start()
	}
	c.waitCovered(15 * time.Second)
	rec := c.record()
	devs := makeDevices(100, 3, 6, 10) // 6–15 s: all still run when their deadlines are read back
	c.startTimers(devs, 2*time.Second)
	var windows []window
	fail := func(what string, k *child, sig syscall.Signal) {
		at := time.Now()
		c.signal(k, sig)
		windows = append(windows, failureWindow(at))
		t.Logf("%s: %s of %s at %s", what, sig, k.name, at.Format("15:04:05.000"))
	}
	// Mid-countdown.
	time.Sleep(time.Second)
	fail("mid-countdown", c.ownerOf(devs[0].uid), syscall.SIGKILL)
	c.start()
	c.waitCovered(10 * time.Second)
	// At a timer's 0.
	d := nextDeadline(devs, time.Now().Add(300*time.Millisecond))
	k := c.ownerOf(d.uid)
	time.Sleep(time.Until(d.deadline))
	fail("at the 0 of "+d.uid+"/"+d.dev, k, syscall.SIGKILL)
	c.start()
	c.waitCovered(10 * time.Second)
	// Just after a timer's 0, before its removal.
	d = nextDeadline(devs, time.Now().Add(300*time.Millisecond))
	k = c.ownerOf(d.uid)
	time.Sleep(time.Until(d.deadline.Add(15 * time.Millisecond)))
	fail("just after the 0 of "+d.uid+"/"+d.dev, k, syscall.SIGKILL)
	c.start()
	c.waitCovered(10 * time.Second)
	// A paused process: it must not tick once it resumes.
	d = nextDeadline(devs, time.Now().Add(300*time.Millisecond))
	if d != nil {
		k = c.ownerOf(d.uid)
		at := time.Now()
		c.signal(k, syscall.SIGSTOP)
		time.Sleep(3 * time.Second)
		c.signal(k, syscall.SIGCONT)
		windows = append(windows, failureWindow(at))
		t.Logf("paused %s for 3 s at %s", k.name, at.Format("15:04:05.000"))
	}
	waitDeadlines(devs, 3*time.Second)
	missed := rec.check(t, devs, windows)
	c.doneEvents(devs)
	t.Logf("%d timers, %d failures, %d tick-seconds missed inside failover windows", len(devs), len(windows), missed)
	c.mu.Lock()
	for _, k := range c.kids {
		select {
		case <-k.done:
			t.Errorf("%s died:\n%s", k.name, k.out.String())
		default:
		}
	}
	c.mu.Unlock()
}

// Every instance stopped at once (SIGTERM), then every instance killed at
// once (SIGKILL), each time restarted: no timer is lost, no deadline moves,
// every timer ends once.
func TestRestartAll(t *testing.T) {
	c := newCluster(t)
	for range 3 {
		c.start()
	}
	c.waitCovered(15 * time.Second)
	rec := c.record()
	devs := makeDevices(30, 2, 7, 5)
	c.startTimers(devs, time.Second)
	var windows []window
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		time.Sleep(time.Second)
		at := time.Now()
		c.mu.Lock()
		kids := make([]*child, 0, len(c.kids))
		for _, k := range c.kids {
			kids = append(kids, k)
		}
		c.mu.Unlock()
		var wg sync.WaitGroup
		for _, k := range kids {
			wg.Go(func() { c.signal(k, sig) })
		}
		wg.Wait()
		for range 3 {
			c.start()
		}
		// Restarting processes take their own time: the window runs from
		// the stop to the takeover plus the failover promise.
		c.waitCovered(15 * time.Second)
		windows = append(windows, window{at.Add(-lateTol), time.Now().Add(failover)})
		t.Logf("%s of every instance at %s, all partitions driven again after %s", sig, at.Format("15:04:05.000"), time.Since(at).Round(time.Millisecond))
	}
	waitDeadlines(devs, 3*time.Second)
	missed := rec.check(t, devs, windows)
	c.doneEvents(devs)
	t.Logf("%d timers, %d tick-seconds missed inside the restart windows", len(devs), missed)
}
