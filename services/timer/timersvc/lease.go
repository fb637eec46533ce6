package timersvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// leaseDoc is the value of the `lease` key.
type leaseDoc struct {
	Instance string `json:"instance"`
	Until    int64  `json:"until"` // Unix milliseconds
	// Sent, in a lease released on purpose, is the due time (Unix ms) up to
	// which the previous holder sent every tick: the next holder does not
	// send those again.
	Sent int64 `json:"sent,omitempty"`
}

// leaseState is this instance's view of the tick lease; only the lease loop
// touches it.
type leaseState struct {
	held       bool
	rev        uint64
	until      time.Time
	gen        uint64 // the ticker's generation of this term
	watcher    jetstream.KeyWatcher
	connSub    *nats.Subscription
	termCancel context.CancelFunc
}

func (s *Service) leaseInterval() time.Duration { return s.cfg.LeaseTTL / 4 }

// leaseLoop competes for the tick lease (or renews it) every LeaseTTL/4.
func (s *Service) leaseLoop() {
	t := time.NewTicker(s.leaseInterval())
	defer t.Stop()
	s.leaseStep()
	for {
		select {
		case <-s.stopLease:
		case <-t.C:
		case <-s.leaseWake:
		}
		select {
		case <-s.stopLease:
			if s.lease.held {
				s.drop("stopping")
				s.flushRemovals(flushTimeout)
				s.release()
			}
			return
		default:
		}
		s.leaseStep()
	}
}

func (s *Service) leaseValue(now time.Time) []byte {
	b, _ := json.Marshal(leaseDoc{Instance: s.instance, Until: now.Add(s.cfg.LeaseTTL).UnixMilli()})
	return b
}

func (s *Service) leaseStep() {
	s.ticker.report()
	iv := s.leaseInterval()
	ctx, cancel := context.WithTimeout(context.Background(), iv)
	defer cancel()
	now := time.Now()
	if !s.lease.held {
		s.acquire(ctx, now)
		return
	}
	if s.watchEnded.Load() == s.lease.gen {
		s.drop("watch ended")
		s.release()
		return
	}
	rev, err := s.kv.Update(ctx, leaseKey, s.leaseValue(now), s.lease.rev)
	switch {
	case err == nil:
		s.lease.rev, s.lease.until = rev, now.Add(s.cfg.LeaseTTL)
	case isConflict(err):
		// Our last renewal may have been stored with its reply lost.
		if cur, crev, gerr := s.readLease(ctx); gerr == nil && cur.Instance == s.instance {
			s.lease.rev, s.lease.until = crev, time.UnixMilli(cur.Until)
			return
		}
		s.drop("lease taken over")
	default:
		s.log.Warn("renew tick lease", "err", err)
		if !time.Now().Add(iv).Before(s.lease.until) {
			s.drop("lease renewal failed")
		}
	}
}

func (s *Service) readLease(ctx context.Context) (leaseDoc, uint64, error) {
	e, err := s.kv.Get(ctx, leaseKey)
	if err != nil {
		return leaseDoc{}, 0, err
	}
	var cur leaseDoc
	if err := json.Unmarshal(e.Value(), &cur); err != nil {
		// A corrupt lease counts as expired.
		s.log.Warn("corrupt tick lease", "err", err)
		return leaseDoc{}, e.Revision(), nil
	}
	return cur, e.Revision(), nil
}

// acquire takes the lease when it is free, expired or already ours (a
// restart under the same instance name).
func (s *Service) acquire(ctx context.Context, now time.Time) {
	cur, rev, err := s.readLease(ctx)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		rev, err = s.kv.Create(ctx, leaseKey, s.leaseValue(now))
	case err != nil:
		s.log.Debug("read tick lease", "err", err)
		return
	case cur.Instance != s.instance && now.UnixMilli() < cur.Until:
		return // held by another instance
	default:
		rev, err = s.kv.Update(ctx, leaseKey, s.leaseValue(now), rev)
	}
	if err != nil {
		if !isConflict(err) {
			s.log.Debug("take tick lease", "err", err)
		}
		return
	}
	if err := s.gain(rev, now.Add(s.cfg.LeaseTTL), cur.Sent); err != nil {
		s.log.Error("start ticking", "err", err)
		s.drop("start failed")
		s.release()
	}
}

// gain starts a term as lease holder: watch every user's timers and the
// connections that open.
func (s *Service) gain(rev uint64, until time.Time, sent int64) error {
	gen := s.ticker.activate(sent)
	termCtx, termCancel := context.WithCancel(s.leaseCtx)
	s.lease = leaseState{held: true, rev: rev, until: until, gen: gen, termCancel: termCancel}
	s.log.Info("tick lease acquired")
	// termCtx lives as long as the watch: bound only its creation.
	guard := time.AfterFunc(opTimeout, termCancel)
	w, err := s.kv.Watch(termCtx, userKeyPrefix+">")
	if !guard.Stop() && err == nil {
		err = errors.New("timed out")
	}
	if err != nil {
		return fmt.Errorf("watch timers: %w", err)
	}
	s.lease.watcher = w
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.watch(gen, w) }()
	sub, err := s.nc.Subscribe(subject.EventConnected, s.onConnected)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", subject.EventConnected, err)
	}
	s.lease.connSub = sub
	return nil
}

// watch feeds the ticker with every change of the users' timers until the
// watcher stops.
func (s *Service) watch(gen uint64, w jetstream.KeyWatcher) {
	defer func() {
		s.watchEnded.Store(gen)
		select {
		case s.leaseWake <- struct{}{}:
		default:
		}
	}()
	loaded := false
	for e := range w.Updates() {
		if e == nil {
			if !loaded {
				loaded = true
				s.log.Info("timers loaded", "timers", s.ticker.count())
			}
			continue
		}
		uid, err := uidFromKey(e.Key())
		if err != nil {
			s.log.Warn("ignoring foreign key in timer bucket", "key", e.Key())
			continue
		}
		if e.Operation() != jetstream.KeyValuePut {
			s.ticker.apply(gen, uid, nil, time.Now())
			continue
		}
		doc := decodeDoc(s.log, e.Key(), e.Value())
		s.ticker.apply(gen, uid, &doc, time.Now())
	}
}

// drop ends the term: ticking stops before it returns.
func (s *Service) drop(reason string) {
	s.ticker.deactivate()
	l := s.lease
	s.lease = leaseState{}
	if l.connSub != nil {
		if err := l.connSub.Unsubscribe(); err != nil {
			s.log.Debug("unsubscribe lifecycle events", "err", err)
		}
	}
	if l.watcher != nil {
		if err := l.watcher.Stop(); err != nil {
			s.log.Debug("stop watcher", "err", err)
		}
	}
	if l.termCancel != nil {
		l.termCancel()
	}
	if l.held {
		s.log.Info("tick lease dropped", "reason", reason)
	}
	// Keep l.rev for release.
	s.lease.rev = l.rev
}

// release frees the lease if it is still the revision we wrote, so another
// instance can take it at once, noting up to when ticks were sent.
func (s *Service) release() {
	rev := s.lease.rev
	s.lease.rev = 0
	if rev == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	free, _ := json.Marshal(leaseDoc{Sent: s.ticker.firedThrough()})
	_, err := s.kv.Update(ctx, leaseKey, free, rev)
	switch {
	case err == nil:
		s.log.Info("tick lease released")
	case isConflict(err):
		// Someone else holds it already.
	case errors.Is(err, nats.ErrConnectionClosed):
		s.log.Debug("release tick lease", "err", err)
	default:
		s.log.Warn("release tick lease", "err", err)
	}
}
