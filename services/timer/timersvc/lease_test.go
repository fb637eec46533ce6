package timersvc

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
)

// resumed checks the ticks of a countdown that changed hands: values only
// go down, each on its place of the grid, the first one no later than
// latest, down to 0 and timerDone, and nothing after.
func resumed(t *testing.T, in *inbox, deadline time.Time, dur int, dev string, latest time.Time) int {
	t.Helper()
	d := in.expect(t, api.EventTick, time.Until(latest)+time.Second+tol)
	r := d.timer(t)
	onGrid(t, d, deadline, r)
	countdown(t, in, deadline, r-1, dur, dev)
	in.none(t, 1200*time.Millisecond)
	return r
}

func (e *env) kv(t *testing.T, cfg Config) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), cfg.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// sink keeps the compiler from dropping a measured call.
var sink int

// PartitionOf is FNV-1a of the user id, computed without allocating.
func TestPartitionOf(t *testing.T) { // not parallel: AllocsPerRun
	for _, uid := range []string{"", "alice", "a.b", "ünïcode", strings.Repeat("x", 300)} {
		h := fnv.New32a()
		_, _ = h.Write([]byte(uid))
		for _, n := range []int{1, 7, 64} {
			if got, want := PartitionOf(uid, n), int(h.Sum32()%uint32(n)); got != want {
				t.Errorf("PartitionOf(%q, %d) = %d, want %d", uid, n, got, want)
			}
		}
	}
	if a := testing.AllocsPerRun(100, func() { sink = PartitionOf("some-user-id", 64) }); a != 0 {
		t.Errorf("PartitionOf allocates %v times", a)
	}
}

func TestAssign(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 7, 64, 1024} {
		for _, members := range [][]string{{"a"}, {"a", "b"}, {"a", "b", "c"}, {"m1", "m2", "m3", "m4", "m5"}} {
			owners := assign(n, members)
			count := map[string]int{}
			for _, o := range owners {
				count[o]++
			}
			for _, m := range members {
				if c, want := count[m], n/len(members); c < want || c > want+1 {
					t.Errorf("n=%d members=%v: %s has %d partitions, want %d or %d", n, members, m, c, want, want+1)
				}
			}
			shuffled := slices.Clone(members)
			slices.Reverse(shuffled)
			if !slices.Equal(assign(n, shuffled), owners) {
				t.Errorf("n=%d: assignment depends on member order", n)
			}
		}
	}
	// A third member joining takes about its share, and most of the others'
	// partitions stay where they were.
	before, after := assign(64, []string{"a", "b"}), assign(64, []string{"a", "b", "c"})
	moved := 0
	for p := range before {
		if before[p] != after[p] && after[p] != "c" {
			moved++
		}
	}
	if moved > 16 {
		t.Errorf("%d partitions moved between the old members", moved)
	}
	if got := assign(3, nil); !slices.Equal(got, []string{"", "", ""}) {
		t.Errorf("no members: %v", got)
	}
}

// Stop hands the countdown to another instance at once, on the same
// deadline, without a repeated or a missing tick.
func TestStopHandsOver(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig()
	cfg.LeaseTTL, cfg.LeaseRenew = 5*time.Second, time.Second // only a release is taken at once
	a := e.startLeader(t, cfg)
	w := who{"alice", "phone", "s1"}
	in := e.listenDevice(t, w.uid, w.dev)
	e.startTimer(t, w, 5)
	deadline := e.deadline(t, w)
	onGrid(t, in.next(t, time.Second), deadline, 5)
	b, _ := e.start(t, cfg) // joins: half the partitions move, released
	waitCovered(t, 3*time.Second, cfg.Partitions, a, b)
	onGrid(t, in.next(t, 2*time.Second), deadline, 4)
	time.Sleep(time.Until(deadline.Add(-3800 * time.Millisecond)))
	if err := a.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	waitCovered(t, time.Second, cfg.Partitions, b)
	countdown(t, in, deadline, 3, 5, w.dev)
	in.none(t, 1200*time.Millisecond)
}

// An instance that vanishes without Stop loses its partitions once their
// leases lapse; another takes over within lease_ttl and goes on with the
// next value on the same grid.
func TestFailover(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig()
	a, _ := e.start(t, cfg)
	b, _ := e.start(t, cfg)
	waitCovered(t, 5*time.Second, cfg.Partitions, a, b)
	w := who{"alice", "phone", "s1"}
	holder := owner(t, cfg.Partitions, w.uid, a, b)
	other := a
	if holder == a {
		other = b
	}
	in := e.listenDevice(t, w.uid, w.dev)
	e.startTimer(t, w, 6)
	deadline := e.deadline(t, w)
	onGrid(t, in.next(t, time.Second), deadline, 6)
	onGrid(t, in.next(t, 2*time.Second), deadline, 5)
	time.Sleep(time.Until(deadline.Add(-4800 * time.Millisecond)))
	holder.nc.Close() // vanish: no Stop, no release
	closed := time.Now()
	// Taken when the lease runs out (its last renewal + lease_ttl), not at
	// the next renewal tick after that.
	p := PartitionOf(w.uid, cfg.Partitions)
	waitFor(t, cfg.LeaseTTL+120*time.Millisecond, "takeover", func() bool { return slices.Contains(other.Status().Partitions, p) })
	t.Logf("taken over %s after the holder vanished", time.Since(closed))
	resumed(t, in, deadline, 6, w.dev, closed.Add(cfg.LeaseTTL+200*time.Millisecond))
	waitCovered(t, time.Second, cfg.Partitions, other)
}

// A holder whose lease was taken stops ticking that partition at once;
// once the intruder's lease has lapsed, ticking resumes on the grid.
func TestLeaseLostStopsTicking(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig()
	a := e.startLeader(t, cfg)
	w := who{"alice", "phone", "s1"}
	in := e.listenDevice(t, w.uid, w.dev)
	e.startTimer(t, w, 6)
	deadline := e.deadline(t, w)
	onGrid(t, in.next(t, time.Second), deadline, 6)

	kv := e.kv(t, cfg)
	intruder, _ := json.Marshal(leaseDoc{Instance: "intruder", Holder: "intruder", TTL: 1000})
	p := PartitionOf(w.uid, cfg.Partitions)
	if _, err := kv.Put(context.Background(), leaseKey(p), intruder); err != nil {
		t.Fatal(err)
	}
	taken := time.Now()
	waitFor(t, 2*cfg.LeaseRenew, "lease loss", func() bool { return !slices.Contains(a.Status().Partitions, p) })
	// At most the tick that was due while the loss went unnoticed.
	for {
		select {
		case d := <-in.ch:
			if d.at.After(taken.Add(2 * cfg.LeaseRenew)) {
				t.Fatalf("tick %s after the lease was lost", d.data)
			}
			continue
		case <-time.After(cfg.LeaseTTL - 300*time.Millisecond):
		}
		break
	}
	resumed(t, in, deadline, 6, w.dev, taken.Add(cfg.LeaseTTL+cfg.LeaseRenew))
}

// Several instances share the partitions: every partition has exactly one
// holder at every moment, and every tick value arrives once.
func TestOneHolderPerPartition(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig()
	var svcs []*Service
	for range 3 {
		s, _ := e.start(t, cfg)
		svcs = append(svcs, s)
	}
	waitCovered(t, 5*time.Second, cfg.Partitions, svcs...)
	var ins []*inbox
	var ws []who
	for i := range 12 {
		w := who{fmt.Sprintf("user%d", i), "phone", ""}
		ins = append(ins, e.listenDevice(t, w.uid, w.dev))
		ws = append(ws, w)
		e.startTimer(t, w, 2)
	}
	stop := time.Now().Add(2 * time.Second)
	for time.Now().Before(stop) {
		seen := map[int]int{}
		for _, s := range svcs {
			for _, p := range s.Status().Partitions {
				if seen[p]++; seen[p] > 1 {
					t.Fatalf("partition %d has two holders", p)
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i, w := range ws {
		var got []int
		for {
			d := ins[i].next(t, 3*time.Second)
			if d.event == api.EventTimerDone {
				break
			}
			got = append(got, d.timer(t))
		}
		if !slices.Equal(got, []int{2, 1, 0}) {
			t.Errorf("%s: ticks %v, want [2 1 0]", w.uid, got)
		}
		ins[i].none(t, 0)
	}
}

// Two instances started with the same name hold different leases: no
// partition is driven by both, and no tick is sent twice.
func TestSameInstanceName(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig()
	cfg.Instance = "timer-1"
	a, _ := e.start(t, cfg)
	b, _ := e.start(t, cfg)
	waitCovered(t, 5*time.Second, cfg.Partitions, a, b)
	if a.Status().Holder == b.Status().Holder {
		t.Fatal("two instances share a lease identity")
	}
	var ins []*inbox
	for i := range 8 {
		w := who{fmt.Sprintf("user%d", i), "phone", ""}
		ins = append(ins, e.listenDevice(t, w.uid, w.dev))
		e.startTimer(t, w, 2)
	}
	for _, in := range ins {
		var got []int
		for {
			d := in.next(t, 3*time.Second)
			if d.event == api.EventTimerDone {
				break
			}
			got = append(got, d.timer(t))
		}
		if !slices.Equal(got, []int{2, 1, 0}) {
			t.Errorf("%s: ticks %v, want [2 1 0]", in.subj, got)
		}
		in.none(t, 300*time.Millisecond)
	}
}

// An instance joining takes its share of the partitions from the running
// ones: countdowns that move go on without a repeated or missing value.
func TestJoinMovesWithoutDoubleTick(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig()
	a := e.startLeader(t, cfg)
	type dev struct {
		w  who
		in *inbox
	}
	var devs []dev
	for i := range 16 {
		w := who{fmt.Sprintf("user%d", i), "phone", ""}
		devs = append(devs, dev{w, e.listenDevice(t, w.uid, w.dev)})
		e.startTimer(t, w, 4)
	}
	time.Sleep(1500 * time.Millisecond)
	b, _ := e.start(t, cfg)
	c, _ := e.start(t, cfg)
	waitCovered(t, 3*time.Second, cfg.Partitions, a, b, c)
	for _, d := range devs {
		var got []int
		for {
			x := d.in.next(t, 3*time.Second)
			if x.event == api.EventTimerDone {
				break
			}
			got = append(got, x.timer(t))
		}
		if !slices.Equal(got, []int{4, 3, 2, 1, 0}) {
			t.Errorf("%s: ticks %v, want [4 3 2 1 0]", d.w.uid, got)
		}
		d.in.none(t, 0)
	}
}

// The partition count is fixed by the bucket: an instance configured with
// another one refuses to start, saying why.
func TestPartitionsFixed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig()
	e.startLeader(t, cfg)
	cfg.Partitions++
	svc, err := Start(context.Background(), testLog(t), e.srv.Conn(t), cfg)
	if err == nil {
		_ = svc.Stop()
		t.Fatal("started with another partition count")
	}
	if want := fmt.Sprintf("has %d partitions", cfg.Partitions-1); !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
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
	// Ticks resume (some may be missing around the outage), only going
	// down, and the last ones are on the original grid.
	last := 6
	var zero delivery
	for {
		d := in.next(t, 4*time.Second)
		if d.event == api.EventTimerDone {
			break
		}
		if r := d.timer(t); r >= last {
			t.Fatalf("tick %d after %d", r, last)
		}
		last = d.timer(t)
		zero = d
	}
	onGrid(t, zero, deadline, 0)
	in.none(t, time.Second)
}

// A KV watch whose consumer is gone (its NATS node died; here the
// consumers are deleted) stops showing updates without an error. The
// instance notices that its own membership writes no longer show and makes
// its watches anew, so a timer started afterwards ticks at once.
func TestStalledWatchesRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig()
	e.startLeader(t, cfg)
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "KV_"+cfg.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	names := st.ConsumerNames(ctx)
	deleted := 0
	for name := range names.Name() {
		if err := st.DeleteConsumer(ctx, name); err != nil {
			t.Fatal(err)
		}
		deleted++
	}
	if deleted == 0 {
		t.Fatal("no watch consumer to delete")
	}
	// The watches are made anew within the same terms: no lease is
	// released (the old watches ending is not their partition's end).
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	leases, err := kv.Watch(ctx, leaseKey(0)[:len(leaseKeyPrefix)]+"*", jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = leases.Stop() }()
	time.Sleep(4 * time.Second) // the instance notices within stallAfter (2 s)
	for {
		select {
		case e := <-leases.Updates():
			var d leaseDoc
			if e != nil && json.Unmarshal(e.Value(), &d) == nil && d.Holder == "" {
				t.Fatalf("%s released after its watch was made anew", e.Key())
			}
			continue
		default:
		}
		break
	}
	w := who{"bob", "phone", "s2"}
	in := e.listenDevice(t, w.uid, w.dev)
	e.startTimer(t, w, 5)
	d := in.next(t, 2*time.Second)
	onGrid(t, d, e.deadline(t, w), 5)
}

// What a new term may skip: ticks sent by the term before it. Our own term
// that lapsed reports how far it sent, which may be past the moment the
// lease was found lapsed; a vanished holder stopped before that moment; a
// released lease says how far its holder sent.
func TestAcquireSent(t *testing.T) {
	now := time.Now()
	cfg := testConfig()
	c := newCoordinator(testLog(t), cfg, nil, 0, "me", "i", nil, nil)
	c.lapsed[3] = now.UnixMilli() + 400
	mk := func(holder string, sent int64, at time.Time) view {
		return view{loaded: true, loadedAt: now.Add(-time.Hour), leases: map[int]seen{3: {rev: 7, at: at, lease: leaseDoc{Holder: holder, TTL: cfg.LeaseTTL.Milliseconds(), Sent: sent}}}}
	}
	for _, tc := range []struct {
		name string
		v    view
		want int64
	}{
		{"our lapsed term", mk("me", 0, now), now.UnixMilli() + 400},
		{"a vanished holder", mk("other", 0, now.Add(-time.Hour)), now.UnixMilli()},
		{"released", mk("", now.UnixMilli()-1234, now.Add(-time.Hour)), now.UnixMilli() - 1234},
	} {
		t.Run(tc.name, func(t *testing.T) {
			op := c.acquirable(3, tc.v, true, now)
			if op == nil || op.sent != tc.want {
				t.Fatalf("acquire %+v, want sent %d", op, tc.want)
			}
		})
	}
}
