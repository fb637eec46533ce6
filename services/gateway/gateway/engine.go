package gateway

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/engineio"
)

// Why an engine connection ends.
type closeReason int

const (
	closeTransport closeReason = iota // the client went away
	closeClient                       // the client sent an Engine.IO close
	closeMalformed                    // protocol violation
	closePingTimeout
	closeConnectTimeout
	closeSlow  // send queue overflow
	closeDrain // gateway shutting down
	closeKick  // last socket kicked on purpose
)

func (r closeReason) String() string {
	return [...]string{"transport close", "client close", "malformed packet", "ping timeout",
		"connect timeout", "slow client", "server drain", "server disconnect"}[r]
}

// engine is one Engine.IO connection, holding one socket per namespace.
type engine struct {
	g         *Gateway
	id        string
	ip        string
	userAgent string
	header    http.Header
	query     map[string][]string

	// inMu serialises the client's input (WebSocket reader, POSTs).
	inMu sync.Mutex
	// verdicts came with the input being handled from another gateway
	// (guarded by inMu; see verified.go).
	verdicts []verdict
	// broken is set when a send queue overflowed.
	broken atomic.Bool

	mu             sync.Mutex
	tr             transport
	polling        *pollTransport // set while (or after) the engine polled
	upgrading      transport      // a WebSocket (here or relayed) probing to take over from polling
	upgradeStarted bool
	forwardSub     *nats.Subscription
	closed         bool

	// sio is the Socket.IO layer above: the engine hands it every message.
	sio *sioConn
}

func newEngine(g *Gateway, r *http.Request) *engine {
	e := &engine{
		g:         g,
		id:        newID(),
		ip:        g.proxies.clientIP(r.RemoteAddr, r.Header.Values("X-Forwarded-For")),
		userAgent: r.UserAgent(),
		header:    r.Header.Clone(),
		query:     r.URL.Query(),
	}
	e.sio = newSIOConn(e)
	return e
}

func (e *engine) log() *slog.Logger { return e.g.log.With("engine", e.id) }

type openPayload struct {
	SID          string   `json:"sid"`
	Upgrades     []string `json:"upgrades"`
	PingInterval int64    `json:"pingInterval"`
	PingTimeout  int64    `json:"pingTimeout"`
	MaxPayload   int      `json:"maxPayload"`
}

// attach binds the engine to its transport and sends the open packet.
func (e *engine) attach(tr transport) {
	upgrades := []string{}
	e.mu.Lock()
	e.tr = tr
	if pt, ok := tr.(*pollTransport); ok {
		e.polling = pt
		upgrades = []string{"websocket"}
	}
	e.mu.Unlock()
	e.g.hub.addEngine(e)
	open, _ := json.Marshal(openPayload{
		SID:          e.id,
		Upgrades:     upgrades,
		PingInterval: e.g.cfg.PingInterval.Milliseconds(),
		PingTimeout:  e.g.cfg.PingTimeout.Milliseconds(),
		MaxPayload:   e.g.cfg.MaxPayload,
	})
	e.sendPacket(engineio.Packet{Type: engineio.Open, Data: open})
	now := time.Now()
	e.g.sched.Set(timerKey{e: e, kind: timerPing}, now.Add(e.g.cfg.PingInterval))
	e.g.sched.Set(timerKey{e: e, kind: timerConnect}, now.Add(e.g.cfg.ConnectTimeout))
}

// attached reports whether the engine got its first transport.
func (e *engine) attached() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.tr != nil
}

func (e *engine) sendPacket(p engineio.Packet) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.sendLocked(p)
}

// sendLocked writes packets, in order, to the transport unless the engine
// is closed; e.mu is held. The Socket.IO layer changes a socket's state and
// sends under that lock, so nothing reaches a socket after it closed and
// nothing is sent before its CONNECT reply.
func (e *engine) sendLocked(ps ...engineio.Packet) {
	if !e.closed && e.tr != nil {
		e.tr.send(ps...)
	}
}

// closedLocked reports whether the engine is closed; e.mu is held.
func (e *engine) closedLocked() bool { return e.closed }

// pingPacket is the heartbeat's ping, encoded once for every engine.
var pingPacket = engineio.Packet{Type: engineio.Ping}.Shared()

func (e *engine) ping() {
	// Arm the pong deadline first: the answer may be handled before the
	// send returns.
	e.g.sched.Set(timerKey{e: e, kind: timerPong}, time.Now().Add(e.g.cfg.PingTimeout))
	e.sendPacket(pingPacket)
}

// onFrame handles one WebSocket frame.
func (e *engine) onFrame(b []byte, binary bool) {
	p, err := engineio.DecodeFrame(b, binary)
	if err != nil {
		e.malformed(err)
		return
	}
	e.onPacket(p)
}

// onPacket handles one Engine.IO packet from the client.
func (e *engine) onPacket(p engineio.Packet) {
	switch p.Type {
	case engineio.Pong:
		e.g.sched.Cancel(timerKey{e: e, kind: timerPong})
		e.g.sched.Set(timerKey{e: e, kind: timerPing}, time.Now().Add(e.g.cfg.PingInterval))
	case engineio.Ping:
		e.sendPacket(engineio.Packet{Type: engineio.Pong, Data: p.Data})
	case engineio.Message:
		e.sio.onMessage(p)
	case engineio.Close:
		e.close(closeClient)
	case engineio.Noop, engineio.Upgrade:
	default:
		e.malformed(errUnexpectedPacket)
	}
}

// slow ends an engine whose send queue is full (messages or bytes). It is
// called from inside a write, under the engine's lock: the close runs apart.
func (e *engine) slow() {
	if e.broken.Swap(true) {
		return
	}
	e.g.metrics.slow.Inc()
	e.log().Warn("send queue full, closing slow client")
	go e.close(closeSlow)
}

func (e *engine) malformed(err error) {
	e.log().Debug("closing on malformed input", "err", err)
	e.close(closeMalformed)
}

// close ends the engine connection and every socket on it. It is idempotent.
func (e *engine) close(why closeReason) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	held := e.sio.closeAll()
	tr := e.tr
	e.mu.Unlock()

	e.g.sched.Cancel(timerKey{e: e, kind: timerPing})
	e.g.sched.Cancel(timerKey{e: e, kind: timerPong})
	e.g.sched.Cancel(timerKey{e: e, kind: timerConnect})
	e.g.sched.Cancel(timerKey{e: e, kind: timerUpgrade})
	e.sio.release(held)
	if tr != nil && why != closeTransport {
		code := 1000
		switch why {
		case closeMalformed:
			code = 1002
		case closeDrain:
			code = 1001
		case closeSlow:
			code = closeCodeSlow
		}
		tr.close(code, why.String())
	}
	e.mu.Lock()
	if e.upgrading != nil {
		e.upgrading.close(1000, why.String())
		e.upgrading = nil
	}
	if e.polling != nil && e.polling != tr {
		e.polling.close(0, "")
	}
	fwd := e.forwardSub
	e.mu.Unlock()
	e.g.unsubscribe(fwd)
	e.g.hub.removeEngine(e)
	e.log().Debug("engine closed", "reason", why.String())
}
