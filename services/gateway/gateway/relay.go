package gateway

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/olahol/melody"

	"github.com/switchboard-rt/switchboard/pkg/engineio"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// A WebSocket upgrade can reach another gateway than the one holding the
// long-polling session (no sticky sessions). That gateway accepts the
// WebSocket and relays its frames over NATS: client frames to
// sb.relay.<id>.in, which the holder reads as the frames of a transport of
// its engine, and the holder's frames back on sb.relay.<id>.out. Everything
// Engine.IO does (probe, upgrade, heartbeats, close) runs at the holder.

const (
	methodUpgrade = "UPGRADE"
	headerRelay   = "Sb-Relay"
	headerBinary  = "Sb-Binary"
	headerClose   = "Sb-Close" // a close of the relayed WebSocket, with its code
	relayKey      = "relay"
)

// relayTransport is, at the holder, the transport of a relayed WebSocket.
type relayTransport struct {
	g   *Gateway
	out string
	in  *nats.Subscription
}

var _ transport = (*relayTransport)(nil)

func (t *relayTransport) send(ps ...engineio.Packet) {
	for _, p := range ps {
		m := nats.NewMsg(t.out)
		if p.Binary {
			m.Header.Set(headerBinary, "1")
			m.Data = p.Data
		} else {
			m.Data = p.Text()
		}
		if err := t.g.nc.PublishMsg(m); err != nil {
			t.g.log.Debug("relay frame", "err", err)
		}
	}
}

func (t *relayTransport) close(code int, reason string) {
	m := nats.NewMsg(t.out)
	m.Header.Set(headerClose, strconv.Itoa(code))
	m.Data = []byte(reason)
	_ = t.g.nc.PublishMsg(m)
	_ = t.in.Unsubscribe()
}

// acceptRelay answers a forwarded UPGRADE: the engine takes the relayed
// WebSocket as its probing transport.
func (e *engine) acceptRelay(relayID string) httpReply {
	in, err1 := subject.RelayIn(relayID)
	out, err2 := subject.RelayOut(relayID)
	if err := errors.Join(err1, err2); err != nil {
		return engineErrReply(errSessionUnknown)
	}
	if !e.startUpgrade() {
		return httpReply{status: http.StatusConflict} // upgraded or upgrading
	}
	t := &relayTransport{g: e.g, out: out}
	// One subscription (and goroutine) per relayed WebSocket, so that a
	// handshake waiting on the services holds up no one else.
	sub, err := e.g.nc.Subscribe(in, func(m *nats.Msg) {
		if m.Header.Get(headerClose) != "" {
			e.onTransportClosed(t)
			_ = m.Sub.Unsubscribe()
			return
		}
		e.onTransportFrame(t, m.Data, m.Header.Get(headerBinary) != "", verdictsOf(m))
	})
	if err != nil {
		e.abortUpgrade(nil)
		return engineErrReply(errBadRequest)
	}
	t.in = sub
	if err := e.g.nc.Flush(); err != nil {
		e.abortUpgrade(t)
		return engineErrReply(errBadRequest)
	}
	e.probeConnected(t)
	return httpReply{status: http.StatusSwitchingProtocols}
}

// relayPipe is, at the gateway that took the WebSocket, the pipe between it
// and the holder.
type relayPipe struct {
	g   *Gateway
	in  string
	sub *nats.Subscription
	// broken is set when the client's send queue overflowed: nothing more
	// is written to it.
	broken    atomic.Bool
	closeOnce sync.Once
	queued    *queuedBytes

	mu sync.Mutex
	s  *melody.Session
}

// relayUpgrade takes a WebSocket for an Engine.IO session held by another
// gateway, if one holds it and accepts the upgrade.
func (g *Gateway) relayUpgrade(w http.ResponseWriter, r *http.Request, sid string) {
	relayID := newID()
	in, err1 := subject.RelayIn(relayID)
	out, err2 := subject.RelayOut(relayID)
	req, err3 := subject.EngineRequest(sid)
	if errors.Join(err1, err2, err3) != nil {
		errSessionUnknown.write(w)
		return
	}
	p := &relayPipe{g: g, in: in}
	var err error
	if p.sub, err = g.subscribe(out, p.fromHolder, p.slow); err != nil {
		errBadRequest.write(w)
		return
	}
	m := nats.NewMsg(req)
	m.Header.Set(headerMethod, methodUpgrade)
	m.Header.Set(headerRelay, relayID)
	ctx, cancel := context.WithTimeout(r.Context(), g.cfg.RequestTimeout)
	reply, err := natsx.RequestMsg(ctx, g.nc, m)
	cancel()
	if err != nil || reply.Header.Get(headerStatus) != strconv.Itoa(http.StatusSwitchingProtocols) {
		g.unsubscribe(p.sub)
		if err == nil && reply.Header.Get(headerStatus) == strconv.Itoa(http.StatusConflict) {
			g.acceptAndClose(w, r) // already upgraded, or upgrading
			return
		}
		errSessionUnknown.write(w)
		return
	}
	p.queued = g.newQueued()
	if err := g.m.HandleRequestWithKeys(w, r, map[string]any{relayKey: p, queuedKey: p.queued}); err != nil {
		g.log.Debug("relayed websocket upgrade", "err", err)
		p.toHolderClose(1006)
	}
}

func relayOf(s *melody.Session) (*relayPipe, bool) {
	p, ok := s.Keys[relayKey].(*relayPipe)
	return p, ok
}

func (p *relayPipe) attach(s *melody.Session) {
	p.mu.Lock()
	p.s = s
	p.mu.Unlock()
}

// toHolder relays a client frame.
func (p *relayPipe) toHolder(b []byte, binary bool) {
	m := nats.NewMsg(p.in)
	if binary {
		m.Header.Set(headerBinary, "1")
	} else {
		var vs []verdict
		b, vs = p.g.stripFrame(p.g.ctx, b)
		setVerdicts(m, vs)
	}
	m.Data = b
	if err := p.g.nc.PublishMsg(m); err != nil {
		p.g.log.Debug("relay frame", "err", err)
	}
}

// toHolderClose tells the holder, once, that the WebSocket is gone.
func (p *relayPipe) toHolderClose(code int) {
	p.closeOnce.Do(func() {
		m := nats.NewMsg(p.in)
		m.Header.Set(headerClose, strconv.Itoa(code))
		_ = p.g.nc.PublishMsg(m)
		p.g.unsubscribe(p.sub)
	})
}

// slow ends a relayed WebSocket whose send queue overflowed (melody reports
// it from inside a write): the connection is cut, as no close frame fits
// in the queue, and the holder ends the session.
func (p *relayPipe) slow() {
	if p.broken.Swap(true) {
		return
	}
	p.g.metrics.slow.Inc()
	p.g.log.Warn("send queue full, closing slow relayed client")
	p.mu.Lock()
	s := p.s
	p.mu.Unlock()
	if s != nil {
		_ = s.WebsocketConnection().Close()
	}
	go p.toHolderClose(closeCodeSlow)
}

// fromHolder writes the holder's frame to the client.
func (p *relayPipe) fromHolder(m *nats.Msg) {
	p.mu.Lock()
	s := p.s
	p.mu.Unlock()
	if s == nil || p.broken.Load() {
		return
	}
	if c := m.Header.Get(headerClose); c != "" {
		code, _ := strconv.Atoi(c)
		_ = s.CloseWithMsg(melody.FormatCloseMessage(code, string(m.Data)))
		p.g.unsubscribe(p.sub)
		return
	}
	if !p.queued.add(len(m.Data)) {
		p.slow()
		return
	}
	if m.Header.Get(headerBinary) != "" {
		_ = s.WriteBinary(m.Data)
	} else {
		_ = s.Write(m.Data)
	}
}
