package presencesvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
)

// minSweep is the shortest pause between two sweeps for dead gateways.
const minSweep = 200 * time.Millisecond

// onHeartbeat records that a gateway is alive.
func (s *Service) onHeartbeat(m *nats.Msg) {
	var hb api.Heartbeat
	if err := json.Unmarshal(m.Data, &hb); err != nil || hb.Gateway == "" {
		s.log.Debug("ignoring malformed heartbeat", "err", err)
		return
	}
	if _, err := keyToken(hb.Gateway); err != nil {
		s.log.Debug("ignoring heartbeat with invalid gateway id", "err", err)
		return
	}
	s.gwMu.Lock()
	s.lastSeen[hb.Gateway] = time.Now()
	s.reported[hb.Gateway] = hb.Digest
	s.gwMu.Unlock()
}

// onConnected learns the gateways of connections admitted by other
// presence instances, so a gateway that dies before its first heartbeat is
// still purged by every instance.
func (s *Service) onConnected(m *nats.Msg) {
	var ev api.LifecycleEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Conn.Gateway == "" {
		return
	}
	if _, err := keyToken(ev.Conn.Gateway); err != nil {
		return
	}
	s.learnGateway(ev.Conn.Gateway, time.Now())
}

// learnGateway starts the grace period of a gateway not yet known.
func (s *Service) learnGateway(gw string, now time.Time) {
	s.gwMu.Lock()
	if _, ok := s.lastSeen[gw]; !ok {
		s.lastSeen[gw] = now
	}
	s.gwMu.Unlock()
}

// discover learns every gateway that holds connections in the bucket and
// gives each a full TTL of grace from now.
func (s *Service) discover(ctx context.Context, now time.Time) error {
	err := s.scan(ctx, allIndexes, func(e jetstream.KeyValueEntry) {
		gw, _, err := parseIndexKey(e.Key())
		if err != nil {
			s.log.Warn("ignoring malformed index key", "key", e.Key())
			return
		}
		s.learnGateway(gw, now)
	}, jetstream.MetaOnly())
	if err != nil {
		return fmt.Errorf("list gateways: %w", err)
	}
	return nil
}

// scan calls fn with the current entry of every key matching filter.
func (s *Service) scan(ctx context.Context, filter string, fn func(jetstream.KeyValueEntry), opts ...jetstream.WatchOpt) error {
	w, err := s.kv.WatchFiltered(ctx, []string{filter}, append(opts, jetstream.IgnoreDeletes())...)
	if err != nil {
		return err
	}
	defer func() {
		if err := w.Stop(); err != nil && !errors.Is(err, nats.ErrBadSubscription) {
			s.log.Debug("stop watcher", "err", err)
		}
	}()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watcher closed")
			}
			if e == nil {
				return nil // all current entries seen
			}
			fn(e)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// sweepLoop purges dead gateways until Stop.
func (s *Service) sweepLoop() {
	defer close(s.done)
	t := time.NewTicker(max(s.cfg.GatewayTTL/5, minSweep))
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-t.C:
			s.sweep(now)
		}
	}
}

// sweep purges every gateway silent for more than GatewayTTL.
func (s *Service) sweep(now time.Time) {
	// Cut off from NATS, this instance hears no heartbeat: it judges no
	// gateway until reconnected (and then grants a new grace period).
	if !s.nc.IsConnected() {
		return
	}
	// Heartbeats still queued here (this process fell behind) would make
	// live gateways look dead: sweep once they are taken in.
	if n, _, err := s.hbSub.Pending(); err == nil && n > 0 {
		return
	}
	type silent struct {
		gw   string
		seen time.Time
	}
	var dead []silent
	s.gwMu.Lock()
	for gw, seen := range s.lastSeen {
		if now.Sub(seen) > s.cfg.GatewayTTL {
			dead = append(dead, silent{gw, seen})
		}
	}
	s.gwMu.Unlock()
	for _, d := range dead {
		n, err := s.purgeGateway(d.gw, d.seen)
		if errors.Is(err, errRevived) {
			continue
		}
		if err != nil {
			if s.ctx.Err() == nil {
				s.log.Error("purge dead gateway, will retry", "gateway", d.gw, "err", err)
			}
			continue
		}
		s.log.Info("purged dead gateway", "gateway", d.gw, "sockets", n)
		s.metrics.purges.Inc()
		s.metrics.purged.Add(float64(n))
		s.gwMu.Lock()
		if s.lastSeen[d.gw].Equal(d.seen) { // not heard from meanwhile
			delete(s.lastSeen, d.gw)
			delete(s.reported, d.gw)
			delete(s.mismatch, d.gw)
		}
		s.gwMu.Unlock()
	}
}

// errRevived stops a purge: the gateway was heard from after all.
var errRevived = errors.New("gateway heard from again")

// stillSilent reports whether gw was not heard from since seen (always,
// for a zero seen: a reset).
func (s *Service) stillSilent(gw string, seen time.Time) bool {
	if seen.IsZero() {
		return true
	}
	s.gwMu.Lock()
	defer s.gwMu.Unlock()
	last, ok := s.lastSeen[gw]
	return !ok || !last.After(seen)
}

// purgeGateway releases every socket indexed under gw, as long as gw stays
// silent since seen. It is idempotent, so several presence instances may
// purge the same gateway at once.
func (s *Service) purgeGateway(gw string, seen time.Time) (int, error) {
	filter, err := indexFilter(gw)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(s.ctx, opTimeout)
	var entries []jetstream.KeyValueEntry
	err = s.scan(ctx, filter, func(e jetstream.KeyValueEntry) { entries = append(entries, e) })
	cancel()
	if err != nil {
		return 0, fmt.Errorf("list sockets: %w", err)
	}
	n := 0
	for _, e := range entries {
		if !s.stillSilent(gw, seen) {
			s.log.Info("gateway heard from again, purge stopped", "gateway", gw, "purged", n)
			return n, errRevived
		}
		if err := s.purgeSocket(e); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

func (s *Service) purgeSocket(e jetstream.KeyValueEntry) error {
	ctx, cancel := context.WithTimeout(s.ctx, opTimeout)
	defer cancel()
	// An index rewritten since the listing is a readmit: keep the socket.
	if cur, err := s.kv.Get(ctx, e.Key()); err == nil && cur.Revision() != e.Revision() {
		return nil
	}
	_, sid, err := parseIndexKey(e.Key())
	uid := string(e.Value())
	if err == nil && uid != "" {
		gone, released, err := s.release(ctx, uid, sid)
		if err != nil && natsx.CodeOf(err) != api.CodeBadRequest {
			return fmt.Errorf("release %s: %w", sid, err)
		}
		if released {
			if k, kerr := indexKey(gone.Gateway, gone.SocketID); kerr == nil && k == e.Key() {
				return nil // release removed the index key
			}
		}
	}
	// No slot behind the index (or a malformed entry): drop the index.
	if err := s.remove(ctx, e.Key()); err != nil {
		return fmt.Errorf("remove %s: %w", e.Key(), err)
	}
	return nil
}
