package gateway

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/olahol/melody"

	"github.com/switchboard-rt/switchboard/pkg/engineio"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// WebSocket frames reach the engine through onWSFrame: from the active
// transport, or from a WebSocket probing to take over from polling.
func (e *engine) onWSFrame(s *melody.Session, b []byte, binary bool) {
	if tr := e.wsTransportOf(s); tr != nil {
		e.onTransportFrame(tr, b, binary, nil)
	}
}

func (e *engine) onWSClosed(s *melody.Session) {
	if tr := e.wsTransportOf(s); tr != nil {
		e.onTransportClosed(tr)
	}
}

// wsTransportOf finds the engine's transport (active or probing) that
// writes to session s.
func (e *engine) wsTransportOf(s *melody.Session) transport {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, tr := range []transport{e.upgrading, e.tr} {
		if ws, ok := tr.(*wsTransport); ok && ws.s == s {
			return tr
		}
	}
	return nil
}

// onTransportFrame handles a frame that came in on tr.
func (e *engine) onTransportFrame(tr transport, b []byte, binary bool, vs []verdict) {
	e.mu.Lock()
	probe, active := e.upgrading == tr, e.tr == tr
	e.mu.Unlock()
	switch {
	case probe:
		e.onProbeFrame(b, binary)
	case active:
		e.inMu.Lock()
		defer e.inMu.Unlock()
		e.verdicts = vs
		defer func() { e.verdicts = nil }()
		e.onFrame(b, binary)
	}
}

// onTransportClosed handles the end of tr: a failed upgrade, or the end of
// the engine.
func (e *engine) onTransportClosed(tr transport) {
	e.mu.Lock()
	probe, active := e.upgrading == tr, e.tr == tr
	e.mu.Unlock()
	switch {
	case probe:
		e.abortUpgrade(nil)
	case active:
		e.close(closeTransport)
	}
}

// startUpgrade reserves the engine for one WebSocket upgrade: only a polling
// engine that is not upgrading or upgraded can.
func (e *engine) startUpgrade() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, polling := e.tr.(*pollTransport)
	if e.closed || !polling || e.upgradeStarted {
		return false
	}
	e.upgradeStarted = true
	return true
}

func (e *engine) probeConnected(t transport) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		t.close(1000, "session closed")
		return
	}
	e.upgrading = t
	e.mu.Unlock()
	e.g.sched.Set(timerKey{e: e, kind: timerUpgrade}, time.Now().Add(e.g.cfg.UpgradeTimeout))
}

// upgradeTimedOut gives the engine back to polling when its upgrade did
// not complete within upgrade_timeout.
func (e *engine) upgradeTimedOut() {
	e.mu.Lock()
	t := e.upgrading
	e.mu.Unlock()
	if t != nil {
		e.log().Debug("upgrade timed out")
		e.abortUpgrade(t)
	}
}

// abortUpgrade gives the engine back to polling.
func (e *engine) abortUpgrade(t transport) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if t != nil {
		t.close(1002, "upgrade failed")
	}
	e.upgrading = nil
	e.upgradeStarted = false
	if e.polling != nil {
		e.polling.setProbing(false)
	}
	e.g.sched.Cancel(timerKey{e: e, kind: timerUpgrade})
}

var probeData = []byte("probe")

// onProbeFrame runs the upgrade handshake: 2probe → 3probe (and a NOOP to
// the held poll so the client can pause polling), then 5 switches.
func (e *engine) onProbeFrame(b []byte, binary bool) {
	p, err := engineio.DecodeFrame(b, binary)
	switch {
	case err == nil && p.Type == engineio.Ping && bytes.Equal(p.Data, probeData):
		e.mu.Lock()
		t := e.upgrading
		e.mu.Unlock()
		if t == nil {
			return
		}
		// Probing before the answer: a poll the client sends right after
		// it finds the engine probing, and waits for the `5`.
		e.polling.setProbing(true)
		t.send(engineio.Packet{Type: engineio.Pong, Data: probeData})
	case err == nil && p.Type == engineio.Upgrade:
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.upgrading == nil || e.closed {
			return
		}
		queued := e.polling.drain()
		e.tr = e.upgrading
		e.upgrading = nil
		e.tr.send(queued...)
		e.g.sched.Cancel(timerKey{e: e, kind: timerUpgrade})
	default:
		e.mu.Lock()
		t := e.upgrading
		e.mu.Unlock()
		e.abortUpgrade(t)
	}
}

// Forwarded polling requests carry the method in this header; replies carry
// the status.
const (
	headerMethod = "Sb-Method"
	headerStatus = "Sb-Status"
)

// addForward lets other gateways forward this polling session's requests.
func (h *hub) addForward(e *engine) error {
	subj, err := subject.EngineRequest(e.id)
	if err != nil {
		return err
	}
	sub, err := h.g.subscribe(subj, func(m *nats.Msg) { go e.serveForwarded(m) }, nil) // a dropped request times out at its sender
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.forwardSub = sub
	e.mu.Unlock()
	return nil
}

func (e *engine) serveForwarded(m *nats.Msg) {
	ctx, cancel := context.WithTimeout(e.g.ctx, e.g.pollDeadline())
	defer cancel()
	var r httpReply
	if method := m.Header.Get(headerMethod); method == methodUpgrade {
		r = e.acceptRelay(m.Header.Get(headerRelay))
	} else {
		r = e.servePoll(ctx, method, m.Data, verdictsOf(m))
	}
	reply := nats.NewMsg(m.Reply)
	reply.Header.Set(headerStatus, strconv.Itoa(r.status))
	reply.Header.Set("Content-Type", r.contentType)
	reply.Data = r.body
	if err := m.RespondMsg(reply); err != nil {
		e.log().Debug("answer forwarded request", "err", err)
	}
}

// forward sends a polling request for a session held by another gateway.
func (g *Gateway) forward(ctx context.Context, sid, method string, body []byte) httpReply {
	subj, err := subject.EngineRequest(sid)
	if err != nil {
		return engineErrReply(errSessionUnknown)
	}
	m := nats.NewMsg(subj)
	m.Header.Set(headerMethod, method)
	if method == http.MethodPost {
		var vs []verdict
		body, vs = g.stripPayload(ctx, body)
		setVerdicts(m, vs)
	}
	m.Data = body
	timeout := g.cfg.RequestTimeout
	if method == http.MethodGet {
		timeout = g.pollDeadline()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	reply, err := natsx.RequestMsg(ctx, g.nc, m)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return engineErrReply(errSessionUnknown)
	case err != nil:
		return textReply(http.StatusGatewayTimeout, "session did not answer")
	}
	status, err := strconv.Atoi(reply.Header.Get(headerStatus))
	if err != nil {
		return textReply(http.StatusBadGateway, "bad forwarded reply")
	}
	return httpReply{status: status, contentType: reply.Header.Get("Content-Type"), body: reply.Data}
}
