package timersvc

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/natsx"
)

// leaseDoc is the value of a partition's lease key.
type leaseDoc struct {
	Instance string `json:"instance"`
	// Holder is the holding process's lease identity; "" when released.
	Holder string `json:"holder"`
	// TTL (ms) is the holder's lease_ttl: others wait this long after the
	// last change they saw before taking the lease.
	TTL int64 `json:"ttl"`
	// Sent, in a released lease, is the due time (Unix ms) up to which the
	// previous holder sent every tick: the next holder does not send those
	// again.
	Sent int64 `json:"sent,omitempty"`
}

// memberDoc is the value of an instance's member key, rewritten every
// lease_renew while it runs.
type memberDoc struct {
	Instance string `json:"instance"`
	TTL      int64  `json:"ttl"`
}

// seen is the last revision observed of a lease or member key, and when
// this process first saw it (a monotonic reading).
type seen struct {
	rev    uint64
	at     time.Time
	lease  leaseDoc
	member memberDoc
}

// holding is a partition this instance holds.
type holding struct {
	rev  uint64
	gen  uint64
	stop func() // ends the partition's watch
}

// partitionDriver starts and stops what a held partition needs besides the
// ticker: the watch of its timers.
type partitionDriver interface {
	startPartition(p int, gen uint64) (stop func(), err error)
	// flush waits (bounded) until the edges and removals of the timers
	// that finished are done.
	flush()
}

// coordinator shares the partitions among the live instances through
// leases in KV. Only its loop goroutine touches held and memberRev.
type coordinator struct {
	log      *slog.Logger
	cfg      Config
	kv       jetstream.KeyValue
	holder   string // this process's lease identity
	instance string
	ticker   *ticker
	driver   partitionDriver
	// markerTTL is the TTL of the marker a purge leaves (0: none).
	markerTTL time.Duration

	mu       sync.Mutex // guards what the watch observed
	loaded   bool
	loadedAt time.Time
	leases   map[int]seen
	members  map[string]seen
	wake     chan struct{}
	ended    chan partGen // partition watches that ended on their own
	// rewatched brings partition watches made anew (restartWatches).
	rewatched chan rewatch

	held map[int]*holding
	// lapsed is, per partition whose term here ended without a release,
	// the due time up to which that term sent every tick.
	lapsed map[int]int64
	// The watch of leases and members: its context, and (guarded by mu)
	// when it last showed this instance's own member key and when that key
	// was last written. A watch that stops showing our own writes runs on
	// a consumer that is gone (its NATS node died): it is made anew, with
	// the partition watches.
	watchCtx  context.Context
	stopWatch func()
	// unseenSince is when the first membership write the watch has not
	// shown yet succeeded (zero: every write was shown).
	unseenSince time.Time
	// wakeAt is the earliest moment, seen by the last step, at which a
	// partition may become takeable or a member's key expire (zero: none).
	wakeAt time.Time
}

type partGen struct {
	p   int
	gen uint64
}

func newCoordinator(log *slog.Logger, cfg Config, kv jetstream.KeyValue, markerTTL time.Duration, holder, instance string, tk *ticker, d partitionDriver) *coordinator {
	return &coordinator{
		log: log, cfg: cfg, kv: kv, markerTTL: markerTTL, holder: holder, instance: instance, ticker: tk, driver: d,
		leases:    map[int]seen{},
		members:   map[string]seen{},
		wake:      make(chan struct{}, 1),
		ended:     make(chan partGen, 16),
		rewatched: make(chan rewatch, 64),
		held:      map[int]*holding{},
		lapsed:    map[int]int64{},
	}
}

func (c *coordinator) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// watch follows every lease and member key until ctx ends.
func (c *coordinator) watch(ctx context.Context) error {
	c.watchCtx = ctx
	return c.startWatch()
}

func (c *coordinator) startWatch() error {
	ctx, cancel := context.WithCancel(c.watchCtx)
	w, err := c.kv.WatchFiltered(ctx, []string{leaseKeyPrefix + "*", memberKeyPrefix + "*"})
	if err != nil {
		cancel()
		return err
	}
	c.stopWatch = func() { cancel(); _ = w.Stop() }
	go func() {
		defer func() { _ = w.Stop() }()
		for e := range w.Updates() {
			c.observe(e)
		}
	}()
	return nil
}

// watchStalled reports whether a membership write that succeeded more than
// stallAfter ago has still not shown in the watch.
func (c *coordinator) watchStalled(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	stallAfter := max(5*c.cfg.LeaseRenew, 2*time.Second)
	return c.loaded && !c.unseenSince.IsZero() && now.Sub(c.unseenSince) > stallAfter
}

// rewatch is a partition watch made anew for term gen.
type rewatch struct {
	p    int
	gen  uint64
	stop func()
}

// restartWatches makes the lease watch anew at once and the watches of
// the held partitions in the background (the lease loop must not wait for
// them: renewals go on); each replaces the old one when it is in place.
// Timers already known go on meanwhile.
func (c *coordinator) restartWatches() {
	c.log.Warn("KV watch stalled (its NATS node is gone?), starting the watches anew")
	if c.stopWatch != nil {
		c.stopWatch()
	}
	c.mu.Lock()
	c.unseenSince = time.Time{}
	c.mu.Unlock()
	if err := c.startWatch(); err != nil {
		c.log.Warn("restart lease watch", "err", err)
	}
	held := make([]partGen, 0, len(c.held))
	for p, h := range c.held {
		held = append(held, partGen{p, h.gen})
	}
	go func() {
		for _, pg := range held {
			stop, err := c.driver.startPartition(pg.p, pg.gen)
			if err != nil {
				c.log.Warn("restart partition watch", "partition", pg.p, "err", err)
				continue
			}
			select {
			case c.rewatched <- rewatch{pg.p, pg.gen, stop}:
			case <-c.watchCtx.Done():
				stop()
				return
			}
		}
	}()
}

// observe records one watch update; a change that may let this instance
// take a partition (a release, a member joining or leaving) wakes the loop.
func (c *coordinator) observe(e jetstream.KeyValueEntry) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if e == nil {
		c.loaded, c.loadedAt = true, now
		c.poke()
		return
	}
	del := e.Operation() != jetstream.KeyValuePut
	key := e.Key()
	if rest, ok := strings.CutPrefix(key, leaseKeyPrefix); ok {
		p, err := strconv.Atoi(rest)
		if err != nil || p < 0 || p >= c.cfg.Partitions {
			return
		}
		if del {
			delete(c.leases, p)
			c.poke()
			return
		}
		var d leaseDoc
		if err := json.Unmarshal(e.Value(), &d); err != nil {
			d = leaseDoc{Holder: "?"} // corrupt: taken over once it stays unchanged for a TTL
		}
		c.leases[p] = seen{rev: e.Revision(), at: now, lease: d}
		if d.Holder == "" {
			c.poke()
		}
		return
	}
	id, _ := strings.CutPrefix(key, memberKeyPrefix)
	if del {
		delete(c.members, id)
		c.poke()
		return
	}
	var m memberDoc
	_ = json.Unmarshal(e.Value(), &m)
	if id == c.holder {
		c.unseenSince = time.Time{}
	}
	_, known := c.members[id]
	c.members[id] = seen{rev: e.Revision(), at: now, member: m}
	if !known {
		c.poke()
	}
}

// run serves the leases until stop is closed, then hands every partition
// back and leaves.
func (c *coordinator) run(stop <-chan struct{}) {
	t := time.NewTicker(c.cfg.LeaseRenew)
	defer t.Stop()
	// Takes over exactly when a lease or membership runs out, not at the
	// next renewal.
	expiry := time.NewTimer(time.Hour)
	defer expiry.Stop()
	for {
		renew := false
		select {
		case <-stop:
			c.leave()
			return
		case <-t.C:
			renew = true
		case <-expiry.C:
		case <-c.wake:
		case rw := <-c.rewatched:
			if h := c.held[rw.p]; h != nil && h.gen == rw.gen {
				h.stop() // the new watch is in place
				h.stop = rw.stop
			} else {
				rw.stop()
			}
			continue
		case pg := <-c.ended:
			if h := c.held[pg.p]; h != nil && h.gen == pg.gen {
				c.handoff(pg.p, "timer watch ended")
			}
		}
		c.step(renew)
		if !c.wakeAt.IsZero() {
			expiry.Reset(time.Until(c.wakeAt) + time.Millisecond)
		}
	}
}

// wakeBy notes that something may change at at.
func (c *coordinator) wakeBy(at time.Time) {
	if c.wakeAt.IsZero() || at.Before(c.wakeAt) {
		c.wakeAt = at
	}
}

// view is a copy of what the watch observed.
type view struct {
	loaded   bool
	loadedAt time.Time
	leases   map[int]seen
	members  map[string]seen
}

func (c *coordinator) view() view {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := view{loaded: c.loaded, loadedAt: c.loadedAt, leases: make(map[int]seen, len(c.leases)), members: make(map[string]seen, len(c.members))}
	for k, s := range c.leases {
		v.leases[k] = s
	}
	for k, s := range c.members {
		v.members[k] = s
	}
	return v
}

// ttlOf is how long to wait after the last change of a key written with
// ttl (ms) before taking it: the longer of the writer's and our own TTL.
func (c *coordinator) ttlOf(ms int64) time.Duration {
	return max(c.cfg.LeaseTTL, time.Duration(ms)*time.Millisecond)
}

// live lists the lease identities of the instances seen alive: this one and
// every member whose key changed within its TTL.
func (c *coordinator) live(v view, now time.Time) []string {
	out := []string{c.holder}
	for id, s := range v.members {
		if id != c.holder && now.Sub(s.at) < c.ttlOf(s.member.TTL) {
			out = append(out, id)
		}
	}
	return out
}

// leaseOp is one lease write of a step, run concurrently with the others.
type leaseOp struct {
	p       int
	acquire bool
	rev     uint64 // 0: create
	sent    int64  // acquire: ticks due up to here need not be sent
	t0      time.Time
	newRev  uint64
	err     error
}

// step renews the held leases (when renew is set), gives up those that
// lapsed or belong to another live instance now, and takes the free ones
// this instance should hold.
func (c *coordinator) step(renew bool) {
	c.ticker.report()
	c.wakeAt = time.Time{}
	if renew {
		c.renewMember()
	}
	v := c.view()
	if !v.loaded {
		return
	}
	now := time.Now()
	owners := assign(c.cfg.Partitions, c.live(v, now))
	for id, s := range v.members {
		if exp := s.at.Add(c.ttlOf(s.member.TTL)); id != c.holder && exp.After(now) {
			c.wakeBy(exp) // the assignment changes when it expires
		}
	}
	if renew {
		c.purgeStaleMembers(v, now)
	}
	var ops []*leaseOp
	for p, h := range c.held {
		switch {
		case !c.ticker.live(p, h.gen):
			c.drop(p, "lease not renewed in time")
		case owners[p] != c.holder:
			c.handoff(p, "rebalance")
		case renew:
			ops = append(ops, &leaseOp{p: p, rev: h.rev})
		}
	}
	for p := range c.cfg.Partitions {
		if c.held[p] != nil {
			continue
		}
		if op := c.acquirable(p, v, owners[p] == c.holder, now); op != nil {
			ops = append(ops, op)
		}
	}
	c.runOps(ops)
	for _, op := range ops {
		if op.acquire {
			c.acquired(op)
		} else {
			c.renewed(op)
		}
	}
	// After the renewals, which must not wait for it.
	if renew && c.watchStalled(time.Now()) {
		c.restartWatches()
	}
}

// acquirable returns the write that takes partition p, if it may be taken
// now: absent, released, ours, or unchanged for a whole TTL. A partition
// assigned to another instance is taken only when it stayed free one more
// TTL (its owner is not taking it).
func (c *coordinator) acquirable(p int, v view, mine bool, now time.Time) *leaseOp {
	s, ok := v.leases[p]
	var freeSince time.Time
	switch {
	case !ok:
		freeSince = v.loadedAt
	case s.lease.Holder == "":
		freeSince = s.at
	case s.lease.Holder == c.holder:
		// Our own term that lapsed: it sent every tick due up to what
		// it reported when it ended, which may be after now (now was
		// read before the term was found lapsed).
		return &leaseOp{p: p, acquire: true, rev: s.rev, sent: max(now.UnixMilli(), c.lapsed[p])}
	default:
		freeSince = s.at.Add(c.ttlOf(s.lease.TTL))
	}
	wait := time.Duration(0)
	if !mine {
		wait = c.cfg.LeaseTTL
	}
	if now.Sub(freeSince) < wait || now.Before(freeSince) {
		c.wakeBy(freeSince.Add(wait))
		return nil
	}
	op := &leaseOp{p: p, acquire: true, rev: s.rev}
	switch {
	case ok && s.lease.Holder == "":
		op.sent = s.lease.Sent
	case ok:
		// Taken from a holder that vanished: it may have sent the ticks
		// due until its fence, which passed before now.
		op.sent = now.UnixMilli()
	}
	return op
}

func (c *coordinator) leaseValue(sent int64) []byte {
	holder := c.holder
	if sent != 0 {
		holder = ""
	}
	b, _ := json.Marshal(leaseDoc{Instance: c.instance, Holder: holder, TTL: c.cfg.LeaseTTL.Milliseconds(), Sent: sent})
	return b
}

func (c *coordinator) runOps(ops []*leaseOp) {
	var wg sync.WaitGroup
	for _, op := range ops {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), c.cfg.LeaseRenew)
			defer cancel()
			op.t0 = time.Now()
			if op.rev == 0 {
				op.newRev, op.err = c.kv.Create(ctx, leaseKey(op.p), c.leaseValue(0))
			} else {
				op.newRev, op.err = c.kv.Update(ctx, leaseKey(op.p), c.leaseValue(0), op.rev)
			}
		})
	}
	wg.Wait()
}

// acquired starts driving a partition whose lease was just taken.
func (c *coordinator) acquired(op *leaseOp) {
	if op.err != nil {
		if !isConflict(op.err) {
			c.log.Debug("take partition lease", "partition", op.p, "err", op.err)
		}
		return
	}
	gen := c.ticker.activate(op.p, op.sent, op.t0.Add(c.cfg.holdFor()))
	stop, err := c.driver.startPartition(op.p, gen)
	if err != nil {
		c.log.Error("start partition", "partition", op.p, "err", err)
		c.ticker.deactivate(op.p)
		c.release(op.p, op.newRev, max(op.sent, 1))
		return
	}
	c.held[op.p] = &holding{rev: op.newRev, gen: gen, stop: stop}
	c.log.Info("partition lease acquired", "partition", op.p)
}

// renewed applies the result of a renewal.
func (c *coordinator) renewed(op *leaseOp) {
	h := c.held[op.p]
	if h == nil {
		return
	}
	switch {
	case op.err == nil:
		h.rev = op.newRev
		if !c.ticker.extend(op.p, h.gen, op.t0.Add(c.cfg.holdFor())) {
			c.drop(op.p, "lease not renewed in time")
		}
	case isConflict(op.err):
		// Our last renewal may have been stored with its reply lost.
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.LeaseRenew)
		defer cancel()
		if e, err := c.kv.Get(ctx, leaseKey(op.p)); err == nil {
			var d leaseDoc
			if json.Unmarshal(e.Value(), &d) == nil && d.Holder == c.holder {
				h.rev = e.Revision()
				return
			}
		}
		c.drop(op.p, "lease taken over")
	default:
		c.log.Debug("renew partition lease", "partition", op.p, "err", op.err)
	}
}

// drop stops driving p without touching its lease (it lapsed or is gone).
func (c *coordinator) drop(p int, reason string) {
	h := c.held[p]
	if h == nil {
		return
	}
	delete(c.held, p)
	c.lapsed[p] = c.ticker.deactivate(p)
	h.stop()
	c.log.Info("partition lease dropped", "partition", p, "reason", reason)
}

// handoff stops driving p and releases its lease, noting up to when ticks
// were sent, so another instance takes over at once without repeating one.
func (c *coordinator) handoff(p int, reason string) {
	h := c.held[p]
	if h == nil {
		return
	}
	delete(c.held, p)
	sent := c.ticker.deactivate(p)
	h.stop()
	c.release(p, h.rev, max(sent, 1))
	c.log.Info("partition lease released", "partition", p, "reason", reason)
}

func (c *coordinator) release(p int, rev uint64, sent int64) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if _, err := c.kv.Update(ctx, leaseKey(p), c.leaseValue(sent), rev); err != nil && !isConflict(err) {
		c.log.Warn("release partition lease", "partition", p, "err", err)
	}
}

func (c *coordinator) renewMember() {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.LeaseRenew)
	defer cancel()
	b, _ := json.Marshal(memberDoc{Instance: c.instance, TTL: c.cfg.LeaseTTL.Milliseconds()})
	if _, err := c.kv.Put(ctx, memberKeyPrefix+c.holder, b); err != nil {
		c.log.Debug("renew membership", "err", err)
		return
	}
	c.mu.Lock()
	if c.unseenSince.IsZero() {
		c.unseenSince = time.Now()
	}
	c.mu.Unlock()
}

// purgeStaleMembers removes the keys of instances gone for long (any
// instance may; the revision check spares one that came back).
func (c *coordinator) purgeStaleMembers(v view, now time.Time) {
	for id, s := range v.members {
		if id == c.holder || now.Sub(s.at) < 10*c.ttlOf(s.member.TTL) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.LeaseRenew)
		err := c.kv.Purge(ctx, memberKeyPrefix+id, natsx.PurgeOpts(c.markerTTL, jetstream.LastRevision(s.rev))...)
		cancel()
		if err != nil && !isConflict(err) {
			c.log.Debug("purge stale member", "member", id, "err", err)
		}
	}
}

// leave stops ticking, lets the finished timers' edges and removals
// complete, then leaves the membership and releases every lease, so the
// other instances take over at once.
func (c *coordinator) leave() {
	sent := map[int]int64{}
	for p := range c.held {
		sent[p] = c.ticker.deactivate(p)
	}
	c.driver.flush()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := c.kv.Purge(ctx, memberKeyPrefix+c.holder, natsx.PurgeOpts(c.markerTTL)...); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		c.log.Debug("leave membership", "err", err)
	}
	for p, h := range c.held {
		delete(c.held, p)
		h.stop()
		c.release(p, h.rev, max(sent[p], 1))
		c.log.Info("partition lease released", "partition", p, "reason", "stopping")
	}
}
