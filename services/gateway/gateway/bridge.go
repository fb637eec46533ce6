package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// subEntry is what a delivery subscription's messages go to, and what to
// do when NATS dropped one of them (nil: nothing).
type subEntry struct {
	fn     func(*nats.Msg)
	onDrop func()
}

// subscribe adds a NATS subscription whose messages are handled by fn on a
// dispatcher shard chosen by subject (so one subject's messages stay in
// order). There is no goroutine per subscription. A message dropped
// because the shard was full calls onDrop.
func (g *Gateway) subscribe(subj string, fn func(*nats.Msg), onDrop func()) (*nats.Subscription, error) {
	h := fnv.New32a()
	_, _ = h.Write([]byte(subj))
	ch := g.shards[int(h.Sum32()%uint32(len(g.shards)))]
	g.subsMu.Lock()
	defer g.subsMu.Unlock()
	sub, err := g.nc.ChanSubscribe(subj, ch)
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subj, err)
	}
	g.subs[sub] = subEntry{fn, onDrop}
	return sub, nil
}

// dropped acts on a message NATS dropped for sub.
func (g *Gateway) dropped(sub *nats.Subscription) {
	if sub == g.all {
		g.log.Error("broadcast deliveries dropped: closing every connection so that clients resynchronise")
		for _, e := range g.hub.engines() {
			e.slow()
		}
		return
	}
	g.subsMu.RLock()
	x, ok := g.subs[sub]
	g.subsMu.RUnlock()
	g.log.Warn("deliveries dropped: the gateway is overloaded", "subject", sub.Subject)
	if ok && x.onDrop != nil {
		go x.onDrop()
	}
}

func (g *Gateway) unsubscribe(sub *nats.Subscription) {
	if sub == nil {
		return
	}
	g.subsMu.Lock()
	delete(g.subs, sub)
	g.subsMu.Unlock()
	if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		g.log.Debug("unsubscribe", "subject", sub.Subject, "err", err)
	}
}

func (g *Gateway) dispatch(ch chan *nats.Msg) {
	for {
		select {
		case <-g.ctx.Done():
			return
		case m := <-ch:
			g.subsMu.RLock()
			x := g.subs[m.Sub]
			g.subsMu.RUnlock()
			if x.fn != nil {
				x.fn(m)
			}
		}
	}
}

func (g *Gateway) heartbeatLoop() {
	t := time.NewTicker(g.cfg.HeartbeatInterval)
	defer t.Stop()
	g.publishHeartbeat()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-t.C:
			g.publishHeartbeat()
			g.publishAddresses()
		}
	}
}

// releaseLoop retries failed releases, apart from the heartbeats (a slow
// presence must not delay them past gateway_ttl).
func (g *Gateway) releaseLoop() {
	t := time.NewTicker(g.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-t.C:
			g.retryReleases(g.ctx)
		}
	}
}

// publishAddresses tells the other gateways how many engines the busiest
// client addresses hold here.
func (g *Gateway) publishAddresses() {
	b, _ := json.Marshal(api.AddressReport{Gateway: g.id, Engines: g.adm.report()})
	if err := g.nc.Publish(subject.GatewayAddresses, b); err != nil {
		g.log.Debug("publish address report", "err", err)
	}
}

// onAddresses takes in another gateway's address report.
func (g *Gateway) onAddresses(m *nats.Msg) {
	var r api.AddressReport
	if err := json.Unmarshal(m.Data, &r); err != nil || r.Gateway == "" || r.Gateway == g.id {
		return
	}
	g.adm.learn(r.Gateway, r.Engines, time.Now())
}

func (g *Gateway) publishHeartbeat() {
	n, digest := g.hub.summary()
	b, _ := json.Marshal(api.Heartbeat{Gateway: g.id, Sockets: n, Digest: digest})
	if err := g.nc.Publish(subject.GatewayHeartbeat, b); err != nil {
		g.log.Warn("publish heartbeat", "err", err)
	}
}

// release frees a socket's slot in presence. Failures are kept and retried
// with every heartbeat until presence confirms.
func (g *Gateway) release(req api.ReleaseRequest) {
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.RequestTimeout)
	defer cancel()
	if _, err := natsx.Request[api.ReleaseReply](ctx, g.nc, subject.PresenceRelease, req); err != nil {
		g.log.Warn("release slot failed, will retry", "socket", req.SocketID, "err", err)
		g.relMu.Lock()
		g.releases[req.SocketID] = req
		g.relMu.Unlock()
	}
}

func (g *Gateway) retryReleases(ctx context.Context) {
	g.relMu.Lock()
	pending := make([]api.ReleaseRequest, 0, len(g.releases))
	for _, r := range g.releases {
		pending = append(pending, r)
	}
	g.relMu.Unlock()
	// Side by side, and each given at most two heartbeats, so that a release
	// left hanging by an outage holds back neither the others nor the next
	// round once presence answers again.
	timeout := min(g.cfg.RequestTimeout, max(2*g.cfg.HeartbeatInterval, time.Second))
	var wg sync.WaitGroup
	sem := make(chan struct{}, releaseParallel)
	for _, r := range pending {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			rctx, cancel := context.WithTimeout(ctx, timeout)
			_, err := natsx.Request[api.ReleaseReply](rctx, g.nc, subject.PresenceRelease, r)
			cancel()
			if err == nil {
				g.relMu.Lock()
				delete(g.releases, r.SocketID)
				g.relMu.Unlock()
			}
		})
	}
	wg.Wait()
}

// releaseParallel bounds the release retries in flight at once.
const releaseParallel = 32

// readmit re-registers every local socket with presence after a NATS
// reconnect: while this gateway was cut off, presence may have purged its
// sockets as those of a dead gateway. Admit is idempotent; a socket that no
// longer fits under the user's limit is disconnected.
func (g *Gateway) readmit() {
	g.publishHeartbeat()
	for _, e := range g.hub.engines() {
		e.mu.Lock()
		var socks []*socket
		for _, s := range e.sio.sockets {
			if s.state == stateConnected {
				socks = append(socks, s)
			}
		}
		e.mu.Unlock()
		for _, s := range socks {
			if g.beforeReadmit != nil {
				g.beforeReadmit(s)
			}
			var err error
			// Services may come back after this gateway: retry while none answers.
			for attempt := 1; attempt <= 10; attempt++ {
				ctx, cancel := context.WithTimeout(g.ctx, g.cfg.RequestTimeout)
				deadline, _ := ctx.Deadline()
				_, err = natsx.Request[api.AdmitReply](ctx, g.nc, subject.PresenceAdmit, api.AdmitRequest{Conn: s.conn, Deadline: deadline})
				cancel()
				if !errors.Is(err, natsx.ErrUnavailable) || g.ctx.Err() != nil {
					break
				}
				time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
			}
			switch {
			case natsx.CodeOf(err) == api.CodeTooMany:
				g.log.Info("socket over the limit after reconnect, disconnecting", "socket", s.id)
				e.sio.kick(s)
			case err != nil:
				g.log.Warn("readmit socket", "socket", s.id, "err", err)
			case !s.isConnected():
				// Closed while this readmit ran (its release may have come
				// first): free the slot the readmit took again.
				g.release(api.ReleaseRequest{SocketID: s.id, UserID: s.conn.UserID})
			}
		}
	}
}

// maxSocketsPage bounds one page of onSocketsRequest.
const maxSocketsPage = 1000

// onSocketsRequest answers presence's reconciliation with a page of this
// gateway's sockets.
func (g *Gateway) onSocketsRequest(m *nats.Msg) {
	if !subject.IsInbox(m.Reply) {
		return
	}
	var req api.GatewaySocketsRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		g.respondError(m.Reply, api.CodeBadRequest, "invalid request")
		return
	}
	limit := req.Limit
	if limit <= 0 || limit > maxSocketsPage {
		limit = maxSocketsPage
	}
	conns, more := g.hub.page(req.After, limit)
	b, _ := json.Marshal(api.GatewaySocketsReply{Conns: conns, More: more})
	if err := m.Respond(b); err != nil {
		g.log.Debug("answer sockets request", "err", err)
	}
}

func (g *Gateway) onDisconnectOrder(m *nats.Msg) {
	var o api.DisconnectOrder
	if err := json.Unmarshal(m.Data, &o); err != nil || o.SocketID == "" {
		g.log.Warn("invalid disconnect order", "err", err)
		return
	}
	if s := g.hub.socket(o.SocketID); s != nil {
		g.log.Info("disconnecting socket on order", "socket", o.SocketID, "reason", o.Reason)
		s.e.sio.kick(s)
	}
}
