package gateway

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/olahol/melody"

	"github.com/switchboard-rt/switchboard/pkg/engineio"
	"github.com/switchboard-rt/switchboard/pkg/socketio"
)

// transport is what an engine writes Engine.IO packets to.
// Packets passed in one call are sent together and in order.
type transport interface {
	send(ps ...engineio.Packet)
	close(code int, reason string)
}

var (
	_ transport = (*wsTransport)(nil)
	_ transport = (*pollTransport)(nil)
)

// wsTransport writes to a melody session. Once its bounded queue overflowed
// (broken), nothing more is written: the connection is being closed, and a
// later message must not arrive after a lost one.
type wsTransport struct {
	s      *melody.Session
	broken *atomic.Bool
	queued *queuedBytes
	onSlow func()
}

func (t *wsTransport) send(ps ...engineio.Packet) {
	for _, p := range ps {
		if t.broken.Load() {
			return
		}
		data := p.Data
		if !p.Binary {
			data = p.Text()
		}
		if !t.queued.add(len(data)) {
			t.onSlow() // sets broken
			return
		}
		if p.Binary {
			_ = t.s.WriteBinary(data)
		} else {
			_ = t.s.Write(data)
		}
	}
}

// queuedBytes counts the bytes handed to a WebSocket session's send queue
// and not yet written (melody reports each write).
type queuedBytes struct {
	n     atomic.Int64
	limit int64
}

// add counts n more bytes; false when that passes the limit.
func (q *queuedBytes) add(n int) bool { return q.n.Add(int64(n)) <= q.limit }

func (q *queuedBytes) sent(n int) { q.n.Add(-int64(n)) }

func (t *wsTransport) close(code int, reason string) {
	if code == closeCodeSlow {
		// The send queue is full, so a close frame cannot be queued: cut the
		// connection.
		_ = t.s.WebsocketConnection().Close()
		return
	}
	_ = t.s.CloseWithMsg(melody.FormatCloseMessage(code, reason))
}

const closeCodeSlow = 1008

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

// timer kinds run by the gateway's scheduler.
type timerKind uint8

const (
	timerPing timerKind = iota
	timerPong
	timerConnect
	timerAck
	timerExpiry
	timerUpgrade
)

type timerKey struct {
	e    *engine
	s    *socket
	kind timerKind
	id   uint64
}

func (g *Gateway) fire(k timerKey, _ time.Time) {
	switch k.kind {
	case timerPing:
		k.e.ping()
	case timerPong:
		k.e.log().Debug("ping timeout")
		k.e.close(closePingTimeout)
	case timerConnect:
		if !k.e.hasSocket() {
			k.e.close(closeConnectTimeout)
		}
	case timerAck:
		k.s.expireAck(k.id)
	case timerExpiry:
		k.s.e.log().Debug("token expired", "socket", k.s.id)
		k.s.e.kick(k.s)
	case timerUpgrade:
		k.e.upgradeTimedOut()
	}
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
	sockets        map[string]*socket // by namespace
	closed         bool
	refusals       int       // CONNECTs refused on this engine
	connWindow     time.Time // start of the minute connCount counts in
	connCount      int

	// A BINARY_EVENT or BINARY_ACK waiting for its attachments, and their
	// size so far; or the number of attachments still to drop (a packet for
	// a namespace not joined). Only the transport's reader touches them.
	binPacket  *socketio.Packet
	binParts   [][]byte
	binBytes   int
	binDiscard int
}

func newEngine(g *Gateway, r *http.Request) *engine {
	return &engine{
		g:         g,
		id:        newID(),
		ip:        g.proxies.clientIP(r.RemoteAddr, r.Header.Values("X-Forwarded-For")),
		userAgent: r.UserAgent(),
		header:    r.Header.Clone(),
		query:     r.URL.Query(),
		sockets:   map[string]*socket{},
	}
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
	if !e.closed && e.tr != nil {
		e.tr.send(p)
	}
}

// sendSIO sends a Socket.IO packet in an Engine.IO message.
func (e *engine) sendSIO(p socketio.Packet) {
	e.sendPacket(engineio.Packet{Type: engineio.Message, Data: p.Encode()})
}

func (e *engine) ping() {
	// Arm the pong deadline first: the answer may be handled before the
	// send returns.
	e.g.sched.Set(timerKey{e: e, kind: timerPong}, time.Now().Add(e.g.cfg.PingTimeout))
	e.sendPacket(engineio.Packet{Type: engineio.Ping})
}

// hasSocket reports whether a namespace is connected on the engine.
func (e *engine) hasSocket() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.sockets {
		if s.state == stateConnected {
			return true
		}
	}
	return false
}

// maxConnectsPerMinute bounds the CONNECTs one engine may send (each costs
// an auth verification and presence writes).
const maxConnectsPerMinute = 30

// countConnect counts a CONNECT and reports whether it is within the bound.
func (e *engine) countConnect(now time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if now.Sub(e.connWindow) >= time.Minute {
		e.connWindow, e.connCount = now, 0
	}
	e.connCount++
	return e.connCount <= maxConnectsPerMinute
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
		e.onMessage(p)
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

// onMessage reassembles binary packets: a BINARY_EVENT or BINARY_ACK is
// followed by exactly its number of binary messages.
//
// The attachments of one packet may total at most max_payload bytes; those
// of a packet for a namespace the engine has not joined are dropped as
// they arrive (the packet is ignored, as a text EVENT for it would be).
func (e *engine) onMessage(m engineio.Packet) {
	if m.Binary {
		if e.binDiscard > 0 {
			e.binDiscard--
			return
		}
		if e.binPacket == nil {
			e.malformed(errUnexpectedBinary)
			return
		}
		if e.binBytes += len(m.Data); e.binBytes > e.g.cfg.MaxPayload {
			e.malformed(errAttachmentsTooLarge)
			return
		}
		e.binParts = append(e.binParts, m.Data)
		if len(e.binParts) == e.binPacket.Attachments {
			p, parts := *e.binPacket, e.binParts
			e.binPacket, e.binParts, e.binBytes = nil, nil, 0
			e.onSocketIO(p, parts)
		}
		return
	}
	if e.binPacket != nil || e.binDiscard > 0 {
		e.malformed(errMissingAttachment)
		return
	}
	p, err := socketio.Decode(m.Data)
	if err != nil {
		e.malformed(err)
		return
	}
	if p.Type.IsBinary() && p.Attachments > 0 {
		if s := e.socket(p.Namespace); s == nil || !s.isConnected() {
			e.log().Debug("binary packet for a namespace not connected", "namespace", p.Namespace)
			e.binDiscard = p.Attachments
			return
		}
		e.binPacket = &p
		return
	}
	e.onSocketIO(p, nil)
}

func (e *engine) onSocketIO(p socketio.Packet, parts [][]byte) {
	switch p.Type {
	case socketio.Connect:
		if !e.countConnect(time.Now()) {
			e.log().Debug("closing after too many CONNECTs")
			e.g.metrics.handshake(msgTooManyAttempts)
			data, _ := json.Marshal(map[string]string{"message": msgTooManyAttempts})
			e.sendSIO(socketio.Packet{Type: socketio.ConnectError, Namespace: p.Namespace, Data: data})
			e.close(closeMalformed)
			return
		}
		e.connect(p)
	case socketio.Disconnect:
		if s := e.socket(p.Namespace); s != nil {
			e.removeSocket(s, false)
		}
	case socketio.Event, socketio.BinaryEvent:
		if s := e.socket(p.Namespace); s != nil && s.isConnected() {
			s.onEvent(p, parts)
		} else {
			e.log().Debug("event for a namespace not connected", "namespace", p.Namespace)
		}
	case socketio.Ack, socketio.BinaryAck:
		if s := e.socket(p.Namespace); s != nil {
			s.onAck(p, parts)
		}
	default: // CONNECT_ERROR from a client, binary packets
		e.malformed(errUnexpectedPacket)
	}
}

func (e *engine) socket(ns string) *socket {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sockets[ns]
}

// connectError answers a CONNECT with a CONNECT_ERROR; the engine stays open.
// maxRefusals bounds the CONNECTs refused on one engine connection: a
// client may retry with a fresh token, but not use one connection to try
// tokens (each costs the auth service a verification) without end.
const maxRefusals = 10

func (e *engine) connectError(ns, msg string) {
	e.g.metrics.handshake(msg)
	data, _ := json.Marshal(map[string]string{"message": msg})
	e.sendSIO(socketio.Packet{Type: socketio.ConnectError, Namespace: ns, Data: data})
	e.mu.Lock()
	e.refusals++
	tooMany := e.refusals >= maxRefusals
	e.mu.Unlock()
	if tooMany {
		e.log().Debug("closing after repeated refused CONNECTs")
		e.close(closeMalformed)
	}
}

// kick ends one socket on purpose: DISCONNECT first, then, when it was the
// engine's last socket, the connection.
func (e *engine) kick(s *socket) {
	e.removeSocket(s, true)
	e.mu.Lock()
	last := len(e.sockets) == 0
	e.mu.Unlock()
	if last {
		e.close(closeKick)
	}
}

// removeSocket detaches one socket (namespace DISCONNECT or kick) and frees
// its slot.
func (e *engine) removeSocket(s *socket, notify bool) {
	e.mu.Lock()
	if e.sockets[s.ns] != s {
		e.mu.Unlock()
		return
	}
	delete(e.sockets, s.ns)
	wasConnected := s.markClosed()
	if notify && wasConnected && !e.closed && e.tr != nil {
		e.tr.send(engineio.Packet{Type: engineio.Message, Data: socketio.Packet{Type: socketio.Disconnect, Namespace: s.ns}.Encode()})
	}
	idle := len(e.sockets) == 0 && !e.closed
	e.mu.Unlock()
	if idle {
		// An engine without sockets holds no slot: it must join a namespace
		// again within connect_timeout or be closed.
		e.g.sched.Set(timerKey{e: e, kind: timerConnect}, time.Now().Add(e.g.cfg.ConnectTimeout))
	}
	if wasConnected {
		e.g.hub.removeSocket(s, true)
	}
}

// close ends the engine connection and every socket on it. It is idempotent.
func (e *engine) close(why closeReason) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	var held []*socket
	for _, s := range e.sockets {
		if s.markClosed() {
			held = append(held, s)
		}
	}
	e.sockets = map[string]*socket{}
	tr := e.tr
	e.mu.Unlock()

	e.g.sched.Cancel(timerKey{e: e, kind: timerPing})
	e.g.sched.Cancel(timerKey{e: e, kind: timerPong})
	e.g.sched.Cancel(timerKey{e: e, kind: timerConnect})
	e.g.sched.Cancel(timerKey{e: e, kind: timerUpgrade})
	for _, s := range held {
		e.g.hub.removeSocket(s, true)
	}
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
