package timersvc

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// capture records what a ticker publishes.
type capture struct {
	mu   sync.Mutex
	msgs []*nats.Msg
}

func (c *capture) PublishMsg(m *nats.Msg) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	// The ticker reuses m: keep a copy.
	c.msgs = append(c.msgs, &nats.Msg{Subject: m.Subject, Header: m.Header, Data: bytes.Clone(m.Data)})
	return nil
}

func (c *capture) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

var _ msgPublisher = (*capture)(nil)

// A watch made anew may replay a user's older values before the current
// one: an update not newer than the last applied is ignored, so a running
// timer is neither removed nor added again (which would send its current
// value a second time).
func TestStaleUpdateIgnored(t *testing.T) {
	pub := &capture{}
	tk := newTicker(testLog(t), pub, 1, 0, func(edge) {})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tk.sched.Run(ctx)
	gen := tk.activate(0, 0, time.Now().Add(time.Hour))
	now := time.Now()
	rec := record{Dur: 60, Start: now.UnixMilli(), Deadline: now.UnixMilli() + 60_000}
	doc := userDoc{Timers: map[string]record{"phone": rec}}
	tk.apply(0, gen, "alice", 5, &doc, now)
	waitFor(t, time.Second, "first tick", func() bool { return pub.count() == 1 })

	// The replay: the key before the timer existed, then the current value.
	tk.apply(0, gen, "alice", 3, nil, time.Now())
	tk.apply(0, gen, "alice", 5, &doc, time.Now())
	if _, ok := tk.current("alice", "phone"); !ok {
		t.Fatal("a stale update removed the running timer")
	}
	time.Sleep(200 * time.Millisecond)
	if n := pub.count(); n != 1 {
		t.Fatalf("%d ticks sent, want the first one only", n)
	}
	// A newer update applies.
	tk.apply(0, gen, "alice", 6, nil, time.Now())
	if _, ok := tk.current("alice", "phone"); ok {
		t.Fatal("the removal was not applied")
	}
}

// A tick fired more than a second late sends the value current then, whose
// due time is later than the one scheduled: the term's end reports that
// later time, so the next holder does not send the same value again.
func TestLateTickCountsTheValueSent(t *testing.T) {
	pub := &capture{}
	old := newTicker(testLog(t), pub, 1, 0, func(edge) {})
	gen := old.activate(0, 0, time.Now().Add(time.Hour))
	now := time.Now()
	start := now.Add(-10300 * time.Millisecond).UnixMilli()
	rec := record{Dur: 60, Start: start, Deadline: start + 60_000}
	doc := userDoc{Timers: map[string]record{"phone": rec}}
	old.apply(0, gen, "alice", 1, &doc, now)
	// The scheduler (not running here) was to send 51 at its due time; it
	// fires 1.3 s late, when 50 is current.
	st := old.parts[0].users["alice"]["phone"]
	st.next = 51
	old.fire(st, time.UnixMilli(rec.Deadline-51_000))
	if n := pub.count(); n != 1 || tickValue(pub.msgs[0].Data) != 50 {
		t.Fatalf("sent %d ticks, first %q; want one 50", n, pub.msgs[0].Data)
	}
	sent := old.deactivate(0)

	next := newTicker(testLog(t), pub, 1, 0, func(edge) {})
	gen = next.activate(0, sent, time.Now().Add(time.Hour))
	next.apply(0, gen, "alice", 1, &doc, time.Now())
	st = next.parts[0].users["alice"]["phone"]
	if st.next != 49 {
		t.Fatalf("the next holder goes on with %d, want 49 (50 was sent)", st.next)
	}
}
