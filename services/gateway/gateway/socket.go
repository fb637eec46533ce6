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
	state    socketState
	pending  []engineio.Packet // deliveries that arrived before the CONNECT reply
	revision uint64            // the highest api.HeaderRevision delivered

	ackMu    sync.Mutex
	nextAck  uint64
	acks     map[uint64]string // server→client ack id → NATS reply subject
	inflight int               // client→server requests awaiting a reply

	subConn   *nats.Subscription
	announced atomic.Bool // sb.in.connect was published
	// token is what the socket's current token proved (nil without auth);
	// a refreshToken replaces it.
	token atomic.Pointer[tokenState]
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

// deliver queues Engine.IO packets for the socket (together, in order),
// holding them while the CONNECT reply has not been sent.
func (s *socket) deliver(ps ...engineio.Packet) { s.deliverAt(0, ps...) }

// deliverAt queues ps as deliver does, if rev (api.HeaderRevision; 0: none)
// is above every revision delivered to the socket so far; an older one is
// dropped.
func (s *socket) deliverAt(rev uint64, ps ...engineio.Packet) {
	e := s.e
	e.mu.Lock()
	if rev != 0 {
		if rev <= s.revision {
			e.mu.Unlock()
			return
		}
		s.revision = rev
	}
	switch s.state {
	case statePending:
		if len(s.pending)+len(ps) > e.g.cfg.SendQueue || packetBytes(s.pending)+packetBytes(ps) > e.g.cfg.SendQueueBytes {
			e.mu.Unlock()
			go e.close(closeSlow)
			return
		}
		s.pending = append(s.pending, ps...)
	case stateConnected:
		e.sendLocked(ps...)
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
	if name == api.EventRefreshToken {
		s.onRefresh(p, args) // handled here: the token never goes on sb.in
		return
	}
	fail := func(msg string) { s.refuse(p, msg) }
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
	if !s.takeRequest() {
		fail(msgTooManyRequests)
		return
	}
	s.e.g.metrics.in.Inc()
	go s.request(m, p.ID)
}

// msgTooManyRequests refuses a client event past max_pending_acks requests
// in flight.
const msgTooManyRequests = "Too many pending requests"

// refuse answers a client event that failed: its ack, or an exception when
// it asked none.
func (s *socket) refuse(p socketio.Packet, msg string) {
	if p.HasID {
		s.sendAck(p.ID, errorArgs(msg))
	} else {
		s.emit(api.EventException, mustJSON(api.ErrorStatus(msg)))
	}
}

// takeRequest counts one more client request in flight, unless
// max_pending_acks are; doneRequest ends it.
func (s *socket) takeRequest() bool {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	if s.inflight >= s.e.g.cfg.MaxPendingAcks {
		return false
	}
	s.inflight++
	return true
}

func (s *socket) doneRequest() {
	s.ackMu.Lock()
	s.inflight--
	s.ackMu.Unlock()
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
	if ts := s.token.Load(); ts != nil && ts.claims != "" {
		m.Header.Set(api.HeaderClaims, ts.claims)
	}
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
	defer s.doneRequest()
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
