package presencesvc

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// The index (g.<gateway>.<socket>) and the gateways' own sockets can drift
// apart: a release lost for good, an admit that landed after its socket
// closed, a gateway restarted with its id while presence was away. Every
// reconcile_interval this instance compares, for each gateway that reports
// a digest in its heartbeats, that digest with the digest of the gateway's
// index keys; at the second mismatch in a row it fetches the gateway's
// sockets and heals what is older than one interval.

// reconcileLoop runs the comparison until Stop.
func (s *Service) reconcileLoop() {
	defer close(s.recDone)
	t := time.NewTicker(s.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			if err := s.reconcile(); err != nil && s.ctx.Err() == nil {
				s.log.Warn("reconcile slots with gateways", "err", err)
			}
		}
	}
}

// reconcile compares every reporting gateway's digest with the index.
func (s *Service) reconcile() error {
	if !s.nc.IsConnected() {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, opTimeout)
	indexed := map[string]uint64{}
	err := s.scan(ctx, allIndexes, func(e jetstream.KeyValueEntry) {
		if gw, sid, err := parseIndexKey(e.Key()); err == nil {
			indexed[gw] = api.SocketDigest(indexed[gw], sid)
		}
	}, jetstream.MetaOnly())
	cancel()
	if err != nil {
		return err
	}
	var heal []string
	s.gwMu.Lock()
	for gw, digest := range s.reported {
		if digest == indexed[gw] {
			delete(s.mismatch, gw)
			continue
		}
		if s.mismatch[gw]++; s.mismatch[gw] >= 2 {
			heal = append(heal, gw)
		}
	}
	s.gwMu.Unlock()
	for _, gw := range heal {
		if err := s.healGateway(gw); err != nil {
			s.log.Warn("heal the slots of a gateway", "gateway", gw, "err", err)
			continue
		}
		s.gwMu.Lock()
		delete(s.mismatch, gw)
		s.gwMu.Unlock()
	}
	return nil
}

// healGateway fetches gw's sockets and makes the index agree with them,
// leaving differences younger than one interval alone.
func (s *Service) healGateway(gw string) error {
	started := time.Now()
	settled := started.Add(-s.cfg.ReconcileInterval)
	held, err := s.gatewaySockets(gw)
	if err != nil {
		return err
	}
	filter, err := indexFilter(gw)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(s.ctx, opTimeout)
	indexed := map[string]jetstream.KeyValueEntry{}
	err = s.scan(ctx, filter, func(e jetstream.KeyValueEntry) {
		if _, sid, err := parseIndexKey(e.Key()); err == nil {
			indexed[sid] = e
		}
	})
	cancel()
	if err != nil {
		return err
	}
	released, admitted := 0, 0
	for sid, e := range indexed {
		if _, ok := held[sid]; ok || e.Created().After(settled) {
			continue
		}
		if err := s.purgeSocket(e); err != nil {
			return err
		}
		released++
	}
	for sid, c := range held {
		if _, ok := indexed[sid]; ok || c.CreatedAt.After(settled) {
			continue
		}
		actx, cancel := context.WithTimeout(s.ctx, opTimeout)
		_, err := s.admit(actx, api.AdmitRequest{Conn: c})
		cancel()
		switch {
		case natsx.CodeOf(err) == api.CodeTooMany:
			if err := s.orderDisconnect(c, "over the connection limit"); err != nil {
				s.log.Warn("disconnect a socket over the limit", "socket", sid, "err", err)
			}
		case err != nil:
			return err
		default:
			admitted++
		}
	}
	if released > 0 || admitted > 0 {
		s.log.Warn("slots healed from a gateway's own list", "gateway", gw, "released", released, "admitted", admitted)
	}
	return nil
}

// gatewaySockets asks gw for its sockets, page by page.
func (s *Service) gatewaySockets(gw string) (map[string]api.Conn, error) {
	subj, err := subject.GatewayControl(gw, subject.OpSockets)
	if err != nil {
		return nil, err
	}
	out := map[string]api.Conn{}
	after := ""
	for {
		ctx, cancel := context.WithTimeout(s.ctx, opTimeout)
		page, err := natsx.Request[api.GatewaySocketsReply](ctx, s.nc, subj, api.GatewaySocketsRequest{After: after, Limit: 1000})
		cancel()
		if err != nil {
			return nil, err
		}
		for _, c := range page.Conns {
			if c.Gateway != gw || c.SocketID <= after {
				return nil, errors.New("gateway sent a malformed sockets page")
			}
			out[c.SocketID] = c
			after = c.SocketID
		}
		if !page.More || len(page.Conns) == 0 {
			return out, nil
		}
	}
}
