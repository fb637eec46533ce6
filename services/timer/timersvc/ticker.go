package timersvc

import (
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/client"
	"github.com/switchboard-rt/switchboard/pkg/sched"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// msgPublisher is the part of *nats.Conn the ticker needs.
type msgPublisher interface {
	PublishMsg(m *nats.Msg) error
}

var _ msgPublisher = (*nats.Conn)(nil)

// tkey identifies a timer: one per device of a user.
type tkey struct{ uid, dev string }

// tstate is a timer driven by the lease holder.
type tstate struct {
	rec  record
	next int    // the next tick value to send
	subj string // the device's delivery subject
}

// removal asks for a finished timer to be removed from KV, provided it still
// has the same start (a replaced timer is left alone).
type removal struct {
	uid, dev string
	start    int64
}

// ticker is the lease holder's in-memory index of every timer, driven by one
// scheduler: the timer's next tick value r is due at deadline - r seconds.
type ticker struct {
	log    *slog.Logger
	pub    msgPublisher
	sched  *sched.Scheduler[tkey]
	remove func(removal) // must not block

	mu     sync.Mutex
	active bool   // this instance holds the lease
	gen    uint64 // bumped on every activation and deactivation
	sent   int64  // ticks due up to here (Unix ms) were sent by the previous holder
	fired  int64  // every tick due up to here (Unix ms) was sent in this term
	users  map[string]map[string]*tstate
	// done holds timers that sent tick 0 and timerDone but may still be in
	// KV (start by device by user), so a stale watch update cannot revive
	// them.
	done map[string]map[string]int64
	// Since the last report: publish failures, ticks sent late.
	pubErrs int
	lastErr error
	late    int
	maxLate time.Duration
}

// lateTick is the delay past its due time from which a tick counts as late.
const lateTick = 250 * time.Millisecond

func newTicker(log *slog.Logger, pub msgPublisher, remove func(removal)) *ticker {
	t := &ticker{
		log:    log,
		pub:    pub,
		remove: remove,
		users:  map[string]map[string]*tstate{},
		done:   map[string]map[string]int64{},
	}
	t.sched = sched.New(t.fire)
	return t
}

// activate starts a term as lease holder and returns its generation. Ticks
// due at or before sent (Unix ms) were sent by the previous holder.
func (t *ticker) activate(sent int64) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gen++
	t.active = true
	t.sent = sent
	t.fired = 0
	return t.gen
}

// firedThrough is the latest due time (Unix ms) up to which every tick was
// sent: the scheduler fires in due order.
func (t *ticker) firedThrough() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fired
}

// deactivate ends the term: no tick is sent after it returns.
func (t *ticker) deactivate() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gen++
	t.active = false
	for uid, devs := range t.users {
		for dev := range devs {
			t.sched.Cancel(tkey{uid, dev})
		}
	}
	clear(t.users)
	clear(t.done)
}

// count is the number of timers being driven.
func (t *ticker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, devs := range t.users {
		n += len(devs)
	}
	return n
}

// apply brings the index of uid in line with doc, the user's value in KV
// (nil when the key was deleted). New and replaced timers send their current
// tick at once; removed ones stop.
func (t *ticker) apply(gen uint64, uid string, doc *userDoc, now time.Time) {
	var timers map[string]record
	if doc != nil {
		timers = doc.Timers
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.active || gen != t.gen {
		return
	}
	devs := t.users[uid]
	for dev, st := range devs {
		if rec, ok := timers[dev]; !ok || rec != st.rec {
			t.sched.Cancel(tkey{uid, dev})
			delete(devs, dev)
		}
	}
	if done := t.done[uid]; done != nil {
		for dev, start := range done {
			if rec, ok := timers[dev]; !ok || rec.Start != start {
				delete(done, dev) // its removal has been seen
			}
		}
		if len(done) == 0 {
			delete(t.done, uid)
		}
	}
	for dev, rec := range timers {
		if _, ok := devs[dev]; ok {
			continue // unchanged, already running
		}
		if start, ok := t.done[uid][dev]; ok && start == rec.Start {
			continue // finished, its removal is on the way
		}
		if !rec.valid() {
			t.log.Warn("ignoring invalid timer", "user", uid, "device", dev, "dur", rec.Dur, "start", rec.Start, "deadline", rec.Deadline)
			continue
		}
		subj, err := subject.OutDevice(uid, dev)
		if err != nil {
			t.log.Warn("ignoring timer of invalid device", "user", uid, "device", dev, "err", err)
			continue
		}
		if devs == nil {
			devs = map[string]*tstate{}
			t.users[uid] = devs
		}
		st := &tstate{rec: rec, next: rec.remaining(now.UnixMilli()), subj: subj}
		devs[dev] = st
		if grid := rec.Deadline - int64(st.next)*1000; st.next > 0 && grid <= t.sent {
			// The previous holder sent this value: go on with the next one.
			st.next--
			t.sched.Set(tkey{uid, dev}, time.UnixMilli(rec.Deadline-int64(st.next)*1000))
			continue
		}
		t.sched.Set(tkey{uid, dev}, now) // current tick at once
	}
	if len(devs) == 0 {
		delete(t.users, uid)
	}
}

// fire sends a timer's due tick and schedules the next one; after tick 0 it
// sends timerDone and asks for the timer's removal.
func (t *ticker) fire(k tkey, due time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.active {
		return
	}
	st := t.users[k.uid][k.dev]
	if st == nil {
		return
	}
	if late := time.Since(due); late > lateTick {
		t.late++
		t.maxLate = max(t.maxLate, late)
	}
	// Ticks fire in due order, so every tick due before this one was sent.
	// (Another timer's tick due in the very same millisecond could still be
	// pending if the term ends right now; the next holder would then skip
	// that one tick.)
	t.fired = max(t.fired, due.UnixMilli())
	// Normally the due value; after a stall of more than a second the
	// missed ticks are skipped rather than sent in a burst.
	r := min(st.next, st.rec.remaining(time.Now().UnixMilli()))
	t.publish(st.subj, api.EventTick, tickPayload(r))
	if r > 0 {
		st.next = r - 1
		t.sched.Set(k, time.UnixMilli(st.rec.Deadline-int64(st.next)*1000))
		return
	}
	t.publish(st.subj, api.EventTimerDone, api.TimerDone{Timer: 0, DeviceID: k.dev, Dur: st.rec.Dur})
	devs := t.users[k.uid]
	delete(devs, k.dev)
	if len(devs) == 0 {
		delete(t.users, k.uid)
	}
	done := t.done[k.uid]
	if done == nil {
		done = map[string]int64{}
		t.done[k.uid] = done
	}
	done[k.dev] = st.rec.Start
	t.remove(removal{uid: k.uid, dev: k.dev, start: st.rec.Start})
}

// current returns the tick value a device that just connected should see,
// if it has a running timer.
func (t *ticker) current(uid, dev string) (int, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.active {
		return 0, false
	}
	st := t.users[uid][dev]
	if st == nil {
		return 0, false
	}
	r := st.rec.remaining(time.Now().UnixMilli())
	if r <= 0 {
		return 0, false // tick 0 goes to the device exactly once
	}
	return r, true
}

// publish sends one delivery; t.mu is held.
func (t *ticker) publish(subj, event string, payload any) {
	m, err := client.DeliveryMsg(subj, event, payload)
	if err == nil {
		err = t.pub.PublishMsg(m)
	}
	if err != nil {
		t.pubErrs++
		t.lastErr = err
	}
}

// report logs and resets the publish failures and late ticks seen since
// the last call.
func (t *ticker) report() {
	t.mu.Lock()
	n, err, late, maxLate := t.pubErrs, t.lastErr, t.late, t.maxLate
	t.pubErrs, t.lastErr, t.late, t.maxLate = 0, nil, 0, 0
	t.mu.Unlock()
	if n > 0 {
		t.log.Warn("tick deliveries failed", "count", n, "err", err)
	}
	if late > 0 {
		t.log.Warn("ticks sent late", "count", late, "max_delay", maxLate)
	}
}

// tickPayload is {"timer":r}.
func tickPayload(r int) []byte {
	b := make([]byte, 0, 24)
	b = append(b, `{"timer":`...)
	b = strconv.AppendInt(b, int64(r), 10)
	return append(b, '}')
}
