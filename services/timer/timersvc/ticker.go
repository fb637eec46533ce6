package timersvc

import (
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/sched"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// msgPublisher is the part of *nats.Conn the ticker needs. PublishMsg must
// not keep m: the ticker reuses it.
type msgPublisher interface {
	PublishMsg(m *nats.Msg) error
}

var _ msgPublisher = (*nats.Conn)(nil)

// tstate is a timer driven by this instance; the scheduler's key.
type tstate struct {
	uid, dev string
	rec      record
	next     int    // the next tick value to send
	subj     string // the device's delivery subject
	p        int
	gen      uint64 // the partition's term
	// gone is set (under ticker.mu) when the timer leaves the index, so a
	// firing already taken from the scheduler does nothing.
	gone bool
	// loadedDone: the timer was past its deadline when this term first saw
	// it, so an earlier holder may have sent its edge already.
	loadedDone bool
}

// edge is a timer that reached 0: its `0` tick and `timerDone` go out
// through the events stream (exactly once), then it is removed from KV.
type edge struct {
	p          int
	gen        uint64
	uid, dev   string
	rec        record
	loadedDone bool
}

// part is the ticker's state of one partition this instance drives.
type part struct {
	gen uint64
	// until fences the term: no tick of the partition is published at or
	// after it (a monotonic reading; the lease can pass to another instance
	// only later). Extended by each renewal.
	until time.Time
	sent  int64 // ticks due up to here (Unix ms) were sent by the previous holder
	// fired: every tick due up to here (Unix ms) was sent in this term, or
	// skipped by a tick that fired more than a second late.
	fired int64
	users map[string]map[string]*tstate
	// done holds timers that reached their edge but may still be in KV
	// (start by device by user), so a stale watch update cannot revive them.
	done map[string]map[string]int64
	// revs is the KV revision of each user's last applied update: a watch
	// made anew (after its NATS node died) may first replay older values
	// from a replica behind the others, which would remove running timers
	// and add them again as new (sending their current value twice).
	revs map[string]uint64
}

// ticker is this instance's in-memory index of the timers of the partitions
// it drives, served by one scheduler: a timer's next tick value r is due at
// deadline - r seconds.
type ticker struct {
	log    *slog.Logger
	pub    msgPublisher
	sched  *sched.Scheduler[*tstate]
	nparts int
	edge   func(edge) // must not block

	mu    sync.Mutex
	msg   nats.Msg // the tick being sent, reused (the connection copies it)
	gen   uint64   // bumped on every activation
	parts map[int]*part
	// Since start: ticks sent, and how late (api.TickLatenessBounds).
	ticks    uint64
	lateHist []uint64
	lateSum  time.Duration // of every tick's lateness
	// Since the last report: publish failures, ticks sent late.
	pubErrs int
	lastErr error
	late    int
	maxLate time.Duration
}

// lateTick is the delay past its due time from which a tick counts as late.
const lateTick = 250 * time.Millisecond

// tickHeader is the header of every tick delivery (shared, never modified).
var tickHeader = nats.Header{api.HeaderEvent: []string{api.EventTick}}

// newTicker returns a ticker of partitions partitions whose scheduler wakes
// on multiples of batch (0: at every due time).
func newTicker(log *slog.Logger, pub msgPublisher, partitions int, batch time.Duration, edge func(edge)) *ticker {
	t := &ticker{log: log, pub: pub, nparts: partitions, edge: edge, parts: map[int]*part{}, lateHist: make([]uint64, len(api.TickLatenessBounds)+1)}
	t.msg.Header = tickHeader
	t.sched = sched.NewBatched(batch, t.fire)
	return t
}

// activate starts driving partition p until until (monotonic) and returns
// the term's generation. Ticks due at or before sent (Unix ms) were sent by
// the previous holder.
func (t *ticker) activate(p int, sent int64, until time.Time) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gen++
	t.dropLocked(p)
	t.parts[p] = &part{gen: t.gen, until: until, sent: sent, users: map[string]map[string]*tstate{}, done: map[string]map[string]int64{}, revs: map[string]uint64{}}
	return t.gen
}

// extend moves the fence of p's term gen to until. It fails when the term
// is over or its fence has passed already: ticks may have been skipped, so
// the term must end.
func (t *ticker) extend(p int, gen uint64, until time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := t.parts[p]
	if ps == nil || ps.gen != gen || !time.Now().Before(ps.until) {
		return false
	}
	ps.until = until
	return true
}

// live reports whether p's term gen is on and its fence not passed.
func (t *ticker) live(p int, gen uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := t.parts[p]
	return ps != nil && ps.gen == gen && time.Now().Before(ps.until)
}

// deactivate stops driving p: no tick of it is sent after it returns. It
// returns the due time (Unix ms) up to which every tick of p was sent.
func (t *ticker) deactivate(p int) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := t.parts[p]
	if ps == nil {
		return 0
	}
	t.dropLocked(p)
	return max(ps.fired, ps.sent)
}

func (t *ticker) dropLocked(p int) {
	ps := t.parts[p]
	if ps == nil {
		return
	}
	for _, devs := range ps.users {
		for _, st := range devs {
			st.gone = true
			t.sched.Cancel(st)
		}
	}
	delete(t.parts, p)
}

// owned lists the partitions being driven and the number of their timers.
func (t *ticker) owned() ([]int, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := make([]int, 0, len(t.parts))
	n := 0
	for p, part := range t.parts {
		ps = append(ps, p)
		for _, devs := range part.users {
			n += len(devs)
		}
	}
	slices.Sort(ps)
	return ps, n
}

// written applies a change of uid's doc that this instance wrote at
// revision rev (doc nil: removed) to the partition's term, if this instance
// drives the partition: the change takes effect without waiting for the
// partition's watch, which then finds the revision applied already.
func (t *ticker) written(uid string, rev uint64, doc *userDoc, now time.Time) {
	p := PartitionOf(uid, t.nparts)
	t.mu.Lock()
	ps := t.parts[p]
	live := ps != nil && now.Before(ps.until)
	var gen uint64
	if live {
		gen = ps.gen
	}
	t.mu.Unlock()
	if live {
		t.apply(p, gen, uid, rev, doc, now)
	}
}

// apply brings the index of uid (in partition p, term gen) in line with doc,
// the user's value in KV (nil when the key was removed). New and replaced
// timers send their current tick at once, unless the previous holder sent
// it; removed ones stop. rev is the update's KV revision (0: unknown,
// always applied); an update not newer than the last applied one of uid is
// ignored.
func (t *ticker) apply(p int, gen uint64, uid string, rev uint64, doc *userDoc, now time.Time) {
	var timers map[string]record
	if doc != nil {
		timers = doc.Timers
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := t.parts[p]
	if ps == nil || ps.gen != gen {
		return
	}
	if rev != 0 {
		if rev <= ps.revs[uid] {
			return
		}
		ps.revs[uid] = rev
	}
	devs := ps.users[uid]
	for dev, st := range devs {
		if rec, ok := timers[dev]; !ok || rec != st.rec {
			st.gone = true
			t.sched.Cancel(st)
			delete(devs, dev)
		}
	}
	if done := ps.done[uid]; done != nil {
		for dev, start := range done {
			if rec, ok := timers[dev]; !ok || rec.Start != start {
				delete(done, dev) // its removal has been seen
			}
		}
		if len(done) == 0 {
			delete(ps.done, uid)
		}
	}
	nowMs := now.UnixMilli()
	for dev, rec := range timers {
		if _, ok := devs[dev]; ok {
			continue // unchanged, already running
		}
		if start, ok := ps.done[uid][dev]; ok && start == rec.Start {
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
			ps.users[uid] = devs
		}
		st := &tstate{uid: uid, dev: dev, rec: rec, next: rec.remaining(nowMs), subj: subj, p: p, gen: gen}
		devs[dev] = st
		if st.next == 0 {
			// Past its deadline when first seen: an earlier holder may
			// have sent its edge already (the edge path checks).
			st.loadedDone = true
			t.sched.Set(st, now)
			continue
		}
		if grid := rec.Deadline - int64(st.next)*1000; grid <= ps.sent {
			// The previous holder may have sent this value: go on with the
			// next one on the grid.
			st.next--
			t.sched.Set(st, time.UnixMilli(rec.Deadline-int64(st.next)*1000))
			continue
		}
		t.sched.Set(st, now) // current tick at once
	}
	if len(devs) == 0 {
		delete(ps.users, uid)
	}
}

// fire sends a timer's due tick and schedules the next one; at 0 it hands
// the timer to the edge path.
func (t *ticker) fire(st *tstate, due time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st.gone {
		return
	}
	ps := t.parts[st.p]
	if ps == nil || ps.gen != st.gen {
		return
	}
	now := time.Now()
	if !now.Before(ps.until) {
		return // fenced: the lease may be someone else's by now
	}
	if late := now.Sub(due); late > lateTick {
		t.late++
		t.maxLate = max(t.maxLate, late)
	}
	// Ticks fire in due order, so every tick due before this one was sent.
	ps.fired = max(ps.fired, due.UnixMilli())
	// Normally the due value; after a stall of more than a second the
	// missed ticks are skipped rather than sent in a burst.
	r := min(st.next, st.rec.remaining(now.UnixMilli()))
	if r > 0 {
		// A late tick sends a later value than the one due: the next
		// holder must not send it again.
		ps.fired = max(ps.fired, st.rec.Deadline-int64(r)*1000)
		t.msg.Subject, t.msg.Data = st.subj, appendTickPayload(t.msg.Data[:0], r)
		t.publish(&t.msg)
		t.countTick(now.Sub(due))
		st.next = r - 1
		t.sched.Set(st, time.UnixMilli(st.rec.Deadline-int64(st.next)*1000))
		return
	}
	st.gone = true
	devs := ps.users[st.uid]
	delete(devs, st.dev)
	if len(devs) == 0 {
		delete(ps.users, st.uid)
	}
	done := ps.done[st.uid]
	if done == nil {
		done = map[string]int64{}
		ps.done[st.uid] = done
	}
	done[st.dev] = st.rec.Start
	t.edge(edge{p: st.p, gen: ps.gen, uid: st.uid, dev: st.dev, rec: st.rec, loadedDone: st.loadedDone})
}

// current returns the tick value a device that just connected should see,
// if this instance drives its running timer.
func (t *ticker) current(uid, dev string) (int, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := t.parts[PartitionOf(uid, t.nparts)]
	if ps == nil || !time.Now().Before(ps.until) {
		return 0, false
	}
	st := ps.users[uid][dev]
	if st == nil {
		return 0, false
	}
	r := st.rec.remaining(time.Now().UnixMilli())
	if r <= 0 {
		return 0, false // tick 0 goes to the device exactly once
	}
	return r, true
}

// countTick records a tick sent late by late; t.mu is held.
func (t *ticker) countTick(late time.Duration) {
	t.ticks++
	i, _ := slices.BinarySearch(api.TickLatenessBounds, late)
	t.lateHist[i]++
	t.lateSum += late
}

// tickStats returns the ticks sent since start, their lateness histogram
// (a copy) and the sum of their lateness.
func (t *ticker) tickStats() (uint64, []uint64, time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ticks, slices.Clone(t.lateHist), t.lateSum
}

// publish sends one delivery; t.mu is held.
func (t *ticker) publish(m *nats.Msg) {
	if err := t.pub.PublishMsg(m); err != nil {
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
func tickPayload(r int) []byte { return appendTickPayload(make([]byte, 0, 24), r) }

// appendTickPayload appends {"timer":r} to b.
func appendTickPayload(b []byte, r int) []byte {
	b = append(b, `{"timer":`...)
	b = strconv.AppendInt(b, int64(r), 10)
	return append(b, '}')
}
