package timersvc

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
)

// remainingAt is the whole seconds a timer with deadline has left at t.
func remainingAt(deadline, t time.Time) int {
	left := deadline.Sub(t)
	if left <= 0 {
		return 0
	}
	return int((left + time.Second - 1) / time.Second)
}

// resumed checks the ticks after a change of lease holder: the first one is
// the current remaining time, sent at once; the others follow on the grid,
// each value once, down to 0 and timerDone.
func resumed(t *testing.T, in *inbox, deadline time.Time, dur int, dev string, latest time.Time) int {
	t.Helper()
	d := in.expect(t, api.EventTick, time.Until(latest)+tol)
	if d.at.After(latest) {
		t.Fatalf("resume tick came %s late", d.at.Sub(latest))
	}
	r := d.timer(t)
	if want := remainingAt(deadline, d.at); r != want && r != want+1 {
		t.Fatalf("resume tick %d, want current remaining %d", r, want)
	}
	countdown(t, in, deadline, r-1, dur, dev)
	in.none(t, 1200*time.Millisecond)
	return r
}

// Stop on the lease holder hands the countdown to another instance at once,
// on the same deadline, without a repeated tick.
func TestRestartKeepsDeadline(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := DefaultConfig() // lease_ttl 5s: only a released lease is taken at once
	a := e.startLeader(t, cfg)
	w := who{"alice", "phone", "s1"}
	in := e.listenDevice(t, w.uid, w.dev)
	e.startTimer(t, w, 5)
	deadline := e.deadline(t, w)
	onGrid(t, in.next(t, time.Second), deadline, 5)
	onGrid(t, in.next(t, 2*time.Second), deadline, 4)
	time.Sleep(time.Until(deadline.Add(-3800 * time.Millisecond)))
	if err := a.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	in.none(t, 0)
	b, _ := e.start(t, cfg)
	// The released lease says tick 4 was sent: the new holder goes on with
	// 3 on the same grid, repeating nothing.
	countdown(t, in, deadline, 3, 5, w.dev)
	in.none(t, 1200*time.Millisecond)
	if !b.Leader() {
		t.Fatal("second instance does not hold the lease")
	}
}

// An instance that vanishes without Stop loses the lease when it expires;
// another one takes over within lease_ttl + 1s, on the same deadline.
func TestLeaseFailover(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig() // lease_ttl 1s
	a := e.startLeader(t, cfg)
	anc := a.nc
	b, _ := e.start(t, cfg)
	time.Sleep(cfg.LeaseTTL / 2)
	if b.Leader() {
		t.Fatal("two lease holders")
	}
	w := who{"alice", "phone", "s1"}
	in := e.listenDevice(t, w.uid, w.dev)
	e.startTimer(t, w, 6)
	deadline := e.deadline(t, w)
	onGrid(t, in.next(t, time.Second), deadline, 6)
	onGrid(t, in.next(t, 2*time.Second), deadline, 5)
	time.Sleep(time.Until(deadline.Add(-4800 * time.Millisecond)))
	anc.Close() // vanish: no Stop, no lease release
	closed := time.Now()
	resumed(t, in, deadline, 6, w.dev, closed.Add(cfg.LeaseTTL+time.Second))
	if !b.Leader() || a.Leader() {
		t.Fatalf("leaders after failover: a=%v b=%v", a.Leader(), b.Leader())
	}
}

// A holder whose lease was taken stops ticking at once; ticking resumes
// with the current value once the lease is free again.
func TestLeaseLostStopsTicking(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig()
	a := e.startLeader(t, cfg)
	w := who{"alice", "phone", "s1"}
	in := e.listenDevice(t, w.uid, w.dev)
	e.startTimer(t, w, 5)
	deadline := e.deadline(t, w)
	onGrid(t, in.next(t, time.Second), deadline, 5)

	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), cfg.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	intruder, _ := json.Marshal(leaseDoc{Instance: "intruder", Until: time.Now().Add(time.Hour).UnixMilli()})
	if _, err := kv.Put(context.Background(), leaseKey, intruder); err != nil {
		t.Fatal(err)
	}
	waitFor(t, cfg.LeaseTTL, "lease loss", func() bool { return !a.Leader() })
	// At most the tick that was due while the loss went unnoticed.
	select {
	case d := <-in.ch:
		onGrid(t, d, deadline, 4)
	case <-time.After(1500 * time.Millisecond):
	}
	in.none(t, 500*time.Millisecond)
	if err := kv.Delete(context.Background(), leaseKey); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	resumed(t, in, deadline, 5, w.dev, freed.Add(cfg.LeaseTTL/2))
}

// With several instances exactly one ticks: every value arrives once.
func TestOneHolderAmongMany(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig()
	var svcs []*Service
	for range 3 {
		s, _ := e.start(t, cfg)
		svcs = append(svcs, s)
	}
	leaders := func() int {
		n := 0
		for _, s := range svcs {
			if s.Leader() {
				n++
			}
		}
		return n
	}
	waitFor(t, 2*time.Second, "a lease holder", func() bool { return leaders() == 1 })
	w := who{"alice", "phone", "s1"}
	in := e.listenDevice(t, w.uid, w.dev)
	e.startTimer(t, w, 2)
	deadline := e.deadline(t, w)
	stop := time.Now().Add(2 * time.Second)
	for time.Now().Before(stop) {
		if n := leaders(); n != 1 {
			t.Fatalf("%d lease holders", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	countdown(t, in, deadline, 2, 2, w.dev)
	in.none(t, time.Second)
}

// A NATS server restart loses no timer and moves no deadline: the countdown
// ends on its original grid.
func TestServerRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig()
	e.startLeader(t, cfg)
	w := who{"alice", "phone", "s1"}
	in := e.listenDevice(t, w.uid, w.dev)
	e.startTimer(t, w, 5)
	deadline := e.deadline(t, w)
	onGrid(t, in.next(t, time.Second), deadline, 5)
	e.srv.Restart()
	waitFor(t, 3*time.Second, "test client reconnect", e.nc.IsConnected)
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// Ticks resume (some may be missing or late around the outage) and the
	// last ones are on the original grid.
	var last delivery
	for {
		d := in.next(t, 4*time.Second)
		if d.event == api.EventTimerDone {
			break
		}
		last = d
	}
	onGrid(t, last, deadline, 0)
	in.none(t, time.Second)
}
