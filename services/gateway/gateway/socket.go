package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/engineio"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/socketio"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

var (
	errUnexpectedBinary    = errors.New("binary message without a binary packet")
	errMissingAttachment   = errors.New("text message while attachments were due")
	errUnexpectedPacket    = errors.New("unexpected packet")
	errAttachmentsTooLarge = errors.New("attachments larger than max_payload")
)

// msgPayloadTooLarge answers a client event that, attachments written in
// base64, is larger than a NATS message may be.
const msgPayloadTooLarge = "Payload too large"

type socketState uint8

const (
	statePending socketState = iota
	stateConnected
	stateClosed
)

// socket is one Socket.IO socket: a namespace joined on an engine.
type socket struct {
	e    *engine
	ns   string
	id   string
	conn api.Conn

	// Guarded by e.mu.
	state   socketState
	pending []engineio.Packet // deliveries that arrived before the CONNECT reply

	ackMu    sync.Mutex
	nextAck  uint64
	acks     map[uint64]string // server→client ack id → NATS reply subject
	inflight int               // client→server requests awaiting a reply

	subConn   *nats.Subscription
	announced atomic.Bool // sb.in.connect was published
}

func (s *socket) isConnected() bool {
	s.e.mu.Lock()
	defer s.e.mu.Unlock()
	return s.state == stateConnected
}

// markClosed moves the socket to closed and reports whether it held a slot
// (was connected). Callers hold e.mu or own s.
func (s *socket) markClosed() bool {
	was := s.state
	s.state = stateClosed
	return was == stateConnected
}

// connect runs the handshake of CONTRACT §2.1 for one CONNECT packet:
// identify, subscribe, admit, then `40`. A refusal is a CONNECT_ERROR and
// leaves the engine open for another CONNECT.
func (e *engine) connect(p socketio.Packet) {
	g := e.g
	ns := p.Namespace
	if !g.nsAllow[ns] {
		e.connectError(ns, msgInvalidNamespace)
		return
	}
	var auth map[string]json.RawMessage
	if len(p.Data) > 0 {
		if err := json.Unmarshal(p.Data, &auth); err != nil {
			e.malformed(err)
			return
		}
	}
	e.mu.Lock()
	if e.closed || e.sockets[ns] != nil {
		e.mu.Unlock() // a CONNECT for a namespace already joined (or joining) is ignored
		return
	}
	s := &socket{e: e, ns: ns, id: newID(), acks: map[uint64]string{}}
	e.sockets[ns] = s
	e.mu.Unlock()

	id, msg := e.identify(s, auth)
	if msg == "" {
		msg = e.admit(s, id.UserID)
	}
	if msg != "" {
		e.mu.Lock()
		if e.sockets[ns] == s {
			delete(e.sockets, ns)
		}
		s.state = stateClosed
		e.mu.Unlock()
		e.connectError(ns, msg)
		return
	}

	e.mu.Lock()
	if e.closed || s.state != statePending {
		e.mu.Unlock()
		g.hub.removeSocket(s, true) // the client left during the handshake
		return
	}
	s.state = stateConnected
	sid, _ := json.Marshal(map[string]string{"sid": s.id})
	e.tr.send(engineio.Packet{Type: engineio.Message, Data: socketio.Packet{Type: socketio.Connect, Namespace: ns, Data: sid}.Encode()})
	e.tr.send(s.pending...)
	s.pending = nil
	e.mu.Unlock()
	g.sched.Cancel(timerKey{e: e, kind: timerConnect})
	if g.cfg.ExpireSockets && !id.Expires.IsZero() {
		g.sched.Set(timerKey{s: s, kind: timerExpiry}, id.Expires)
		if !s.isConnected() {
			// Removed meanwhile: its removal may have cancelled before the
			// timer was set.
			g.sched.Cancel(timerKey{s: s, kind: timerExpiry})
		}
	}
	connectArgs := json.RawMessage("[]")
	if g.opts.forwardAuth && len(p.Data) > 0 {
		connectArgs = socketio.ArrayPayload(p.Data)
	}
	g.metrics.handshake("")
	s.announced.Store(true)
	s.publishLifecycle(api.EventConnect, connectArgs)
	e.log().Debug("socket connected", "socket", s.id, "user", id.UserID, "device", s.conn.DeviceID, "namespace", ns)
}

// identify settles who is connecting: the device id, and the user from the
// auth service (the socket id without auth). It fills s.conn, or returns
// the CONNECT_ERROR message.
func (e *engine) identify(s *socket, auth map[string]json.RawMessage) (api.VerifyReply, string) {
	g := e.g
	devID, ok := deviceID(e.query["deviceId"], auth["deviceId"], s.id)
	if !ok {
		return api.VerifyReply{}, msgInvalidDevice
	}
	id := api.VerifyReply{UserID: s.id}
	if !g.opts.noAuth {
		v, ok := e.verdictFor(auth["token"]) // checked by the gateway that forwarded it
		if !ok {
			v = g.verify(g.ctx, credentials{
				authToken:  auth["token"],
				header:     e.header.Get("Authorization"),
				query:      first(e.query["token"]),
				allowQuery: g.cfg.AllowQueryToken,
			})
		}
		if v.Msg != "" {
			return id, v.Msg
		}
		id = *v.ID
	}
	s.conn = api.Conn{
		SocketID:  s.id,
		UserID:    id.UserID,
		DeviceID:  devID,
		IP:        e.ip,
		UserAgent: e.userAgent,
		CreatedAt: time.Now().UTC().Truncate(time.Millisecond),
		Gateway:   g.id,
	}
	return id, ""
}

// admit subscribes the socket's delivery subjects, then takes its slot in
// presence, or returns the CONNECT_ERROR message. Subscribing comes first:
// presence's `connections` update for this socket is published after the
// admit and must not be missed.
func (e *engine) admit(s *socket, uid string) string {
	g := e.g
	if err := g.hub.addSocket(s); err != nil {
		e.log().Warn("subscribe socket", "err", err)
		return msgUnavailable
	}
	ctx, cancel := context.WithTimeout(g.ctx, g.cfg.RequestTimeout)
	deadline, _ := ctx.Deadline()
	start := time.Now()
	_, err := natsx.Request[api.AdmitReply](ctx, g.nc, subject.PresenceAdmit, api.AdmitRequest{Conn: s.conn, Deadline: deadline})
	g.metrics.request(reqAdmit, start)
	cancel()
	if err == nil {
		return ""
	}
	if natsx.CodeOf(err) == api.CodeTooMany {
		g.hub.removeSocket(s, false)
		return msgTooMany
	}
	// A timed-out admit may still have taken the slot: release anyway, and
	// once more later in case the admit is still on its way.
	g.hub.removeSocket(s, true)
	req := api.ReleaseRequest{SocketID: s.id, UserID: uid}
	time.AfterFunc(g.cfg.RequestTimeout, func() { g.release(req) })
	e.log().Warn("admit connection", "err", err)
	return msgUnavailable
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// deliver queues Engine.IO packets for the socket (together, in order),
// holding them while the CONNECT reply has not been sent.
func (s *socket) deliver(ps ...engineio.Packet) {
	e := s.e
	e.mu.Lock()
	switch s.state {
	case statePending:
		if len(s.pending)+len(ps) > e.g.cfg.SendQueue || packetBytes(s.pending)+packetBytes(ps) > e.g.cfg.SendQueueBytes {
			e.mu.Unlock()
			go e.close(closeSlow)
			return
		}
		s.pending = append(s.pending, ps...)
	case stateConnected:
		if !e.closed {
			e.tr.send(ps...)
		}
	}
	e.mu.Unlock()
}

// sioPackets encodes a Socket.IO EVENT or ACK as Engine.IO packets, turning
// {"_binary":…} values into attachments (BINARY_EVENT, BINARY_ACK).
func sioPackets(typ socketio.Type, ns string, hasID bool, id uint64, data json.RawMessage) []engineio.Packet {
	var parts [][]byte
	if socketio.HasBinary(data) {
		if d, p, err := socketio.Deconstruct(data); err == nil && len(p) > 0 {
			data, parts = d, p
			typ += socketio.BinaryEvent - socketio.Event
		}
	}
	out := make([]engineio.Packet, 0, 1+len(parts))
	out = append(out, engineio.Packet{Type: engineio.Message, Data: socketio.Packet{
		Type: typ, Namespace: ns, HasID: hasID, ID: id, Attachments: len(parts), Data: data,
	}.Encode()})
	for _, b := range parts {
		out = append(out, engineio.Packet{Type: engineio.Message, Data: b, Binary: true})
	}
	return out
}

// onEvent forwards a client event to sb.in.<event>: a request when the client
// asked for an ack, a publish otherwise.
func (s *socket) onEvent(p socketio.Packet, parts [][]byte) {
	if len(parts) > 0 {
		data, err := socketio.Reconstruct(p.Data, parts)
		if err != nil {
			s.e.malformed(err)
			return
		}
		p.Data = data
	}
	name, args, err := p.Event()
	if err != nil {
		s.e.malformed(err)
		return
	}
	fail := func(msg string) {
		if p.HasID {
			s.sendAck(p.ID, errorArgs(msg))
		} else {
			s.emit(api.EventException, mustJSON(api.ErrorStatus(msg)))
		}
	}
	if socketio.Reserved(name) {
		fail("Reserved event name: " + name)
		return
	}
	subj, err := subject.In(name)
	if err != nil || !headerSafe(name) {
		fail("Invalid event name")
		return
	}
	m := s.inMsg(subj, name, socketio.ArrayPayload(args...))
	if !s.e.g.fitsNATS(len(m.Data)) {
		s.e.log().Warn("client event larger than NATS carries refused", "event", name, "bytes", len(m.Data))
		fail(msgPayloadTooLarge)
		return
	}
	if !p.HasID {
		if err := s.e.g.nc.PublishMsg(m); err != nil {
			s.e.log().Warn("publish client event", "event", name, "err", err)
			fail(msgUnavailable)
			return
		}
		s.e.g.metrics.in.Inc()
		return
	}
	s.ackMu.Lock()
	if s.inflight >= s.e.g.cfg.MaxPendingAcks {
		s.ackMu.Unlock()
		fail("Too many pending requests")
		return
	}
	s.inflight++
	s.ackMu.Unlock()
	s.e.g.metrics.in.Inc()
	go s.request(m, p.ID)
}

// headerSafe reports whether name survives as a NATS header value
// unchanged: no control characters and no white space at either end
// (which header encoding would rewrite or trim, so that the Sb-Event a
// service reads could differ from the event's subject).
func headerSafe(name string) bool {
	if name == "" || name[0] == ' ' || name[0] == '\t' || name[len(name)-1] == ' ' || name[len(name)-1] == '\t' {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// inMsg builds a message for sb.in.<event> with the socket's identity.
func (s *socket) inMsg(subj, event string, body []byte) *nats.Msg {
	m := nats.NewMsg(subj)
	m.Header.Set(api.HeaderEvent, event)
	m.Header.Set(api.HeaderUser, s.conn.UserID)
	m.Header.Set(api.HeaderDevice, s.conn.DeviceID)
	m.Header.Set(api.HeaderSocket, s.id)
	m.Header.Set(api.HeaderNamespace, s.ns)
	m.Header.Set(api.HeaderGateway, s.e.g.id)
	m.Data = body
	return m
}

// publishLifecycle tells services that the socket connected or left
// (sb.in.connect, sb.in.disconnect: names no client can send).
func (s *socket) publishLifecycle(event string, body []byte) {
	subj, err := subject.In(event)
	if err != nil {
		return
	}
	if err := s.e.g.nc.PublishMsg(s.inMsg(subj, event, body)); err != nil {
		s.e.log().Debug("publish lifecycle", "event", event, "err", err)
	}
}

func (s *socket) request(m *nats.Msg, ackID uint64) {
	defer func() {
		s.ackMu.Lock()
		s.inflight--
		s.ackMu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(s.e.g.ctx, s.e.g.cfg.RequestTimeout)
	defer cancel()
	start := time.Now()
	reply, err := natsx.RequestMsg(ctx, s.e.g.nc, m)
	s.e.g.metrics.request(reqEvent, start)
	switch {
	case errors.Is(err, natsx.ErrUnavailable) && errors.Is(err, nats.ErrNoResponders):
		s.sendAck(ackID, errorArgs("No handler for event "+m.Header.Get(api.HeaderEvent)))
	case err != nil:
		s.sendAck(ackID, errorArgs(msgUnavailable))
	default:
		s.sendAck(ackID, ackArgs(reply))
	}
}

// ackArgs turns a service's reply into ACK arguments: a JSON array is the
// argument list, a micro error becomes {"status":"error",…}, anything else
// is read as a delivery body (one argument).
func ackArgs(reply *nats.Msg) json.RawMessage {
	if e := natsx.ErrorFromMsg(reply); e != nil {
		return errorArgs(e.Message)
	}
	if bytes.HasPrefix(bytes.TrimLeft(reply.Data, " \t\r\n"), []byte("[")) && json.Valid(reply.Data) {
		return reply.Data
	}
	return socketio.ArrayPayload(deliveryArgs(reply.Data)...)
}

func errorArgs(msg string) json.RawMessage {
	return socketio.ArrayPayload(mustJSON(api.ErrorStatus(msg)))
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only called with values that always marshal
	}
	return b
}

func (s *socket) sendAck(id uint64, args json.RawMessage) {
	s.deliver(sioPackets(socketio.Ack, s.ns, true, id, args)...)
}

// emit sends a server event with one argument.
func (s *socket) emit(name string, arg json.RawMessage) {
	s.deliver(sioPackets(socketio.Event, s.ns, false, 0, socketio.EventPayload(name, arg))...)
}

// emitWithAck sends a server event whose client ack is published to reply.
func (s *socket) emitWithAck(name string, args []json.RawMessage, reply string) {
	s.ackMu.Lock()
	if len(s.acks) >= s.e.g.cfg.MaxPendingAcks {
		s.ackMu.Unlock()
		s.e.g.respondError(reply, api.CodeTooMany, "too many pending acks for this connection")
		return
	}
	s.nextAck++
	id := s.nextAck
	s.acks[id] = reply
	s.ackMu.Unlock()
	s.e.g.sched.Set(timerKey{s: s, kind: timerAck, id: id}, time.Now().Add(s.e.g.cfg.RequestTimeout*2))
	s.deliver(sioPackets(socketio.Event, s.ns, true, id, socketio.EventPayload(name, args...))...)
}

// onAck publishes a client's ACK to the service that asked for it.
func (s *socket) onAck(p socketio.Packet, parts [][]byte) {
	s.ackMu.Lock()
	reply, ok := s.acks[p.ID]
	delete(s.acks, p.ID)
	s.ackMu.Unlock()
	if !ok {
		s.e.log().Debug("ack for unknown id", "id", p.ID)
		return
	}
	s.e.g.sched.Cancel(timerKey{s: s, kind: timerAck, id: p.ID})
	data, err := socketio.Reconstruct(p.Data, parts)
	if err != nil {
		s.e.malformed(err)
		return
	}
	if !s.e.g.fitsNATS(len(data)) {
		s.e.log().Warn("client ack larger than NATS carries refused", "bytes", len(data))
		s.e.g.respondError(reply, api.CodeTooLarge, "ack payload too large")
		return
	}
	if err := s.e.g.nc.Publish(reply, data); err != nil {
		s.e.log().Warn("publish ack", "err", err)
	}
}

func (s *socket) expireAck(id uint64) {
	s.ackMu.Lock()
	delete(s.acks, id)
	s.ackMu.Unlock()
}

func (s *socket) dropAcks() {
	s.ackMu.Lock()
	ids := make([]uint64, 0, len(s.acks))
	for id := range s.acks {
		ids = append(ids, id)
	}
	s.acks = map[uint64]string{}
	s.ackMu.Unlock()
	for _, id := range ids {
		s.e.g.sched.Cancel(timerKey{s: s, kind: timerAck, id: id})
	}
}
