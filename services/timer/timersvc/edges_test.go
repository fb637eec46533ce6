package timersvc

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// openStorage opens the bucket and the events stream as an instance would,
// without starting one.
func (e *env) openStorage(t *testing.T, cfg Config) (jetstream.JetStream, jetstream.KeyValue, time.Duration) {
	t.Helper()
	ctx := context.Background()
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, markerTTL, err := openBucket(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openStream(ctx, js, cfg); err != nil {
		t.Fatal(err)
	}
	return js, kv, markerTTL
}

// events reads the timer events for backend services stored in the stream.
func (e *env) events(t *testing.T, cfg Config, want int) []api.TimerEvent {
	t.Helper()
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, cfg.EventsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject.TimerEvents}})
	if err != nil {
		t.Fatal(err)
	}
	var out []api.TimerEvent
	for len(out) < want {
		m, err := cons.Next(jetstream.FetchMaxWait(3 * time.Second))
		if err != nil {
			t.Fatalf("after %d of %d events: %v", len(out), want, err)
		}
		var ev api.TimerEvent
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		if got, want := m.Headers().Get(api.HeaderEvent), timerEventNames[subjectKind(m.Subject())]; got != want {
			t.Errorf("%s: Sb-Event %q, want %q", m.Subject(), got, want)
		}
		ev.Reason = subjectKind(m.Subject()) + "/" + ev.Reason
		out = append(out, ev)
	}
	if m, err := cons.Next(jetstream.FetchMaxWait(300 * time.Millisecond)); err == nil {
		t.Fatalf("unexpected event on %s: %s", m.Subject(), m.Data())
	}
	return out
}

// subjectKind is the kind token of a timer event subject.
func subjectKind(subj string) string { return strings.Split(subj, ".")[3] }

// Backend services find timerStarted, timerStopped (stopped or replaced)
// and timerDone in the events stream, once each, with user, device, dur and
// deadline.
func TestTimerEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig()
	e.startLeader(t, cfg)
	w := who{"a.b", "phone", "s1"}
	in := e.listenDevice(t, w.uid, w.dev)
	e.startTimer(t, w, 30)
	e.startTimer(t, w, 40) // replaces
	e.ok(t, api.EventTimerStop, w, `[]`, nil)
	e.ok(t, api.EventTimerStop, w, `[]`, nil) // nothing to stop: no event
	e.startTimer(t, w, 1)
	deadline := e.deadline(t, w)
	for {
		if d := in.next(t, 3*time.Second); d.event == api.EventTimerDone {
			break
		}
	}
	evs := e.events(t, cfg, 6)
	want := []struct {
		kind string
		dur  int
	}{{"started/", 30}, {"stopped/replaced", 30}, {"started/", 40}, {"stopped/stopped", 40}, {"started/", 1}, {"done/", 1}}
	for i, ev := range evs {
		if ev.Reason != want[i].kind || ev.Dur != want[i].dur || ev.UserID != w.uid || ev.DeviceID != w.dev {
			t.Errorf("event %d: %+v, want %s dur %d", i, ev, want[i].kind, want[i].dur)
		}
		if d := ev.Deadline.Sub(ev.Start); d != time.Duration(ev.Dur)*time.Second {
			t.Errorf("event %d: deadline - start = %s, want %ds", i, d, ev.Dur)
		}
	}
	if !evs[5].Deadline.Equal(deadline) {
		t.Errorf("done deadline %s, want %s", evs[5].Deadline, deadline)
	}
}

// A timer found past its deadline (its holder died between its edge and
// its removal, or before its edge) gets exactly the phases of its edge
// that are not stored yet: never a second 0 or timerDone.
func TestEdgeCompletedOnce(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		stored int // phases the previous holder stored
		want   []string
	}{
		{"nothing sent", 0, []string{api.EventTick, api.EventTimerDone}},
		{"0 sent", phaseDone, []string{api.EventTimerDone}},
		{"timerDone sent", phaseEvent, nil},
		{"all sent", phases, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			cfg := testConfig()
			ctx := context.Background()
			js, kv, markerTTL := e.openStorage(t, cfg)
			w := who{"alice", "phone", ""}
			in := e.listenDevice(t, w.uid, w.dev)
			// A timer that ended 2 s ago, still in KV.
			now := time.Now().UnixMilli()
			rec := record{Dur: 3, Start: now - 5000, Deadline: now - 2000}
			st := &store{kv: kv, log: testLog(t), partitions: cfg.Partitions, markerTTL: markerTTL}
			key, _ := st.key(w.uid)
			if err := st.save(ctx, key, userDoc{Timers: map[string]record{w.dev: rec}}, 0); err != nil {
				t.Fatal(err)
			}
			x := edge{uid: w.uid, dev: w.dev, rec: rec}
			for phase := range tc.stored {
				m, err := edgeMsg(x, phase)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := js.PublishMsg(ctx, m); err != nil {
					t.Fatal(err)
				}
			}
			// The republished edges of the earlier holder.
			for phase := range min(tc.stored, phaseEvent) {
				want := []string{api.EventTick, api.EventTimerDone}[phase]
				in.expect(t, want, time.Second)
			}
			e.startLeader(t, cfg)
			for _, ev := range tc.want {
				in.expect(t, ev, 3*time.Second)
			}
			in.none(t, time.Second)
			if got := e.timers(t, w); len(got) != 0 {
				t.Fatalf("timer not removed: %+v", got)
			}
			waitFor(t, 2*time.Second, "timer key removed", func() bool {
				_, err := kv.Get(ctx, key)
				return err != nil
			})
			evs := e.events(t, cfg, 1)
			if evs[0].Reason != "done/" || evs[0].DeviceID != w.dev {
				t.Fatalf("event %+v, want one done", evs[0])
			}
		})
	}
}

// The server stores an edge once and republishes it once, however often it
// is published within the duplicate window.
func TestEdgeDeduplicated(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig()
	ctx := context.Background()
	js, _, _ := e.openStorage(t, cfg)
	w := who{"user@example.com", "tab.1", ""}
	in := e.listenDevice(t, w.uid, w.dev)
	x := edge{uid: w.uid, dev: w.dev, rec: record{Dur: 2, Start: 1000, Deadline: 3000}}
	for range 3 {
		for phase := range phases {
			m, err := edgeMsg(x, phase)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := js.PublishMsg(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	if d := in.expect(t, api.EventTick, time.Second); d.timer(t) != 0 {
		t.Fatalf("edge tick %s", d.data)
	}
	d := in.expect(t, api.EventTimerDone, time.Second)
	var done api.TimerDone
	if err := json.Unmarshal(d.data, &done); err != nil || done != (api.TimerDone{Timer: 0, DeviceID: w.dev, Dur: 2}) {
		t.Fatalf("timerDone %s", d.data)
	}
	in.none(t, 500*time.Millisecond)
}

// A timer past its deadline whose partition has no holder (its NATS node
// or instance failing) has not sent its end yet; a timerStart (or
// timerStop) of the same device replaces it in the store, after which no
// holder would ever send that end. The request sends it first: the device
// sees the old timer's 0 and timerDone before the new timer's first tick,
// and services get its timerDone event.
func TestReplacedAfterDeadlineStillEnds(t *testing.T) {
	for _, op := range []string{api.EventTimerStart, api.EventTimerStop} {
		t.Run(op, func(t *testing.T) {
			e := newEnv(t)
			cfg := testConfig()
			ctx := context.Background()
			_, kv, markerTTL := e.openStorage(t, cfg)
			w := who{"alice", "phone", ""}
			in := e.listenDevice(t, w.uid, w.dev)
			// Another holder keeps alice's partition (and never drives it).
			p := PartitionOf(w.uid, cfg.Partitions)
			foreign, _ := json.Marshal(leaseDoc{Instance: "elsewhere", Holder: "elsewhere", TTL: cfg.LeaseTTL.Milliseconds()})
			hold, stopHold := context.WithCancel(ctx)
			defer stopHold()
			if _, err := kv.Put(ctx, leaseKey(p), foreign); err != nil {
				t.Fatal(err)
			}
			go func() {
				for hold.Err() == nil {
					_, _ = kv.Put(hold, leaseKey(p), foreign)
					time.Sleep(cfg.LeaseRenew)
				}
			}()
			now := time.Now().UnixMilli()
			rec := record{Dur: 3, Start: now - 5000, Deadline: now - 2000}
			st := &store{kv: kv, log: testLog(t), partitions: cfg.Partitions, markerTTL: markerTTL}
			key, _ := st.key(w.uid)
			if err := st.save(ctx, key, userDoc{Timers: map[string]record{w.dev: rec}}, 0); err != nil {
				t.Fatal(err)
			}
			svc, _ := e.start(t, cfg)
			waitCovered(t, 5*time.Second, cfg.Partitions-1, svc) // all but alice's
			in.none(t, time.Second)                              // nobody drives it
			if op == api.EventTimerStart {
				e.startTimer(t, w, 5)
			} else {
				e.ok(t, api.EventTimerStop, w, `[]`, nil)
			}
			if r := in.expect(t, api.EventTick, 2*time.Second).timer(t); r != 0 {
				t.Fatalf("tick %d, want the old timer's 0", r)
			}
			in.expect(t, api.EventTimerDone, 2*time.Second)
			want := 1 // the old timer's done
			if op == api.EventTimerStart {
				want = 2 // and the new one's start
			}
			evs := e.events(t, cfg, want)
			if evs[0].Reason != "done/" || evs[0].Dur != 3 {
				t.Fatalf("first event %+v, want the old timer's done", evs[0])
			}
		})
	}
}

// A timer event waits (retrying, a few seconds at most) for a stream that
// does not answer, as during a leader election, instead of being lost.
func TestEventsWaitForTheStream(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig()
	e.startLeader(t, cfg)
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := js.DeleteStream(ctx, cfg.EventsStream); err != nil {
		t.Fatal(err)
	}
	back := time.AfterFunc(700*time.Millisecond, func() {
		if err := Provision(ctx, e.nc, cfg); err != nil {
			t.Errorf("provision: %v", err)
		}
	})
	defer back.Stop()
	w := who{"bob", "tab", ""}
	e.startTimer(t, w, 30)
	waitFor(t, 5*time.Second, "the stream back", func() bool {
		_, err := js.Stream(ctx, cfg.EventsStream)
		return err == nil
	})
	evs := e.events(t, cfg, 1)
	if evs[0].Reason != "started/" || evs[0].DeviceID != w.dev {
		t.Fatalf("event %+v, want the start", evs[0])
	}
}

// The messages of two timers of one device never share an id: a timer
// stopped and the next started within the same millisecond differ in dur.
func TestMsgIDPerTimer(t *testing.T) {
	a := record{Dur: 40, Start: 1000, Deadline: 41000}
	b := record{Dur: 1, Start: 1000, Deadline: 2000}
	if msgID("u", "d", a, "edge-done") == msgID("u", "d", b, "edge-done") {
		t.Fatal("two timers started in the same millisecond share an id")
	}
	if msgID("u", "d", a, "edge-done") == msgID("u", "d", a, "edge-tick0") {
		t.Fatal("two messages of one timer share an id")
	}
}
