package gateway

import (
	"encoding/json"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/engineio"
	"github.com/switchboard-rt/switchboard/pkg/socketio"
)

// sioConn is the Socket.IO layer of one engine: the sockets of the
// namespaces joined on it, the reassembly of binary packets, and the bounds
// on CONNECTs. The engine hands it every Engine.IO message; it answers and
// delivers through the engine, which it never reaches past.
type sioConn struct {
	e *engine

	// Guarded by e.mu: a socket's state changes together with what the
	// engine's transport is sent.
	sockets    map[string]*socket // by namespace
	refusals   int                // CONNECTs refused on this engine
	connWindow time.Time          // start of the minute connCount counts in
	connCount  int

	// A BINARY_EVENT or BINARY_ACK waiting for its attachments, and their
	// size so far; or the number of attachments still to drop (a packet for
	// a namespace not joined). Only the transport's reader touches them.
	binPacket  *socketio.Packet
	binParts   [][]byte
	binBytes   int
	binDiscard int
}

func newSIOConn(e *engine) *sioConn {
	return &sioConn{e: e, sockets: map[string]*socket{}}
}

// release gives back the slots of sockets closeAll returned (e.mu not
// held).
func (c *sioConn) release(held []*socket) {
	for _, s := range held {
		c.e.g.hub.removeSocket(s, true)
	}
}

// send sends a Socket.IO packet in an Engine.IO message.
func (c *sioConn) send(p socketio.Packet) {
	c.e.sendPacket(engineio.Packet{Type: engineio.Message, Data: p.Encode()})
}

// closeAll marks every socket closed and returns those that held a slot;
// the engine is closing (e.mu is held).
func (c *sioConn) closeAll() []*socket {
	var held []*socket
	for _, s := range c.sockets {
		if s.markClosed() {
			held = append(held, s)
		}
	}
	c.sockets = map[string]*socket{}
	return held
}

// hasSocket reports whether a namespace is connected on the engine.
func (c *sioConn) hasSocket() bool {
	c.e.mu.Lock()
	defer c.e.mu.Unlock()
	for _, s := range c.sockets {
		if s.state == stateConnected {
			return true
		}
	}
	return false
}

// maxConnectsPerMinute bounds the CONNECTs one engine may send (each costs
// an auth verification and presence writes); refreshToken events count too.
const maxConnectsPerMinute = 30

// countConnect counts a CONNECT and reports whether it is within the bound.
func (c *sioConn) countConnect(now time.Time) bool {
	c.e.mu.Lock()
	defer c.e.mu.Unlock()
	if now.Sub(c.connWindow) >= time.Minute {
		c.connWindow, c.connCount = now, 0
	}
	c.connCount++
	return c.connCount <= maxConnectsPerMinute
}

// onMessage reassembles binary packets: a BINARY_EVENT or BINARY_ACK is
// followed by exactly its number of binary messages.
//
// The attachments of one packet may total at most max_payload bytes; those
// of a packet for a namespace the engine has not joined are dropped as
// they arrive (the packet is ignored, as a text EVENT for it would be).
func (c *sioConn) onMessage(m engineio.Packet) {
	if m.Binary {
		if c.binDiscard > 0 {
			c.binDiscard--
			return
		}
		if c.binPacket == nil {
			c.e.malformed(errUnexpectedBinary)
			return
		}
		if c.binBytes += len(m.Data); c.binBytes > c.e.g.cfg.MaxPayload {
			c.e.malformed(errAttachmentsTooLarge)
			return
		}
		c.binParts = append(c.binParts, m.Data)
		if len(c.binParts) == c.binPacket.Attachments {
			p, parts := *c.binPacket, c.binParts
			c.binPacket, c.binParts, c.binBytes = nil, nil, 0
			c.onSocketIO(p, parts)
		}
		return
	}
	if c.binPacket != nil || c.binDiscard > 0 {
		c.e.malformed(errMissingAttachment)
		return
	}
	p, err := socketio.Decode(m.Data)
	if err != nil {
		c.e.malformed(err)
		return
	}
	if p.Type.IsBinary() && p.Attachments > 0 {
		if s := c.socket(p.Namespace); s == nil || !s.isConnected() {
			c.e.log().Debug("binary packet for a namespace not connected", "namespace", p.Namespace)
			c.binDiscard = p.Attachments
			return
		}
		c.binPacket = &p
		return
	}
	c.onSocketIO(p, nil)
}

func (c *sioConn) onSocketIO(p socketio.Packet, parts [][]byte) {
	switch p.Type {
	case socketio.Connect:
		if !c.countConnect(time.Now()) {
			c.e.log().Debug("closing after too many CONNECTs")
			c.e.g.metrics.handshake(msgTooManyAttempts)
			data, _ := json.Marshal(map[string]string{"message": msgTooManyAttempts})
			c.send(socketio.Packet{Type: socketio.ConnectError, Namespace: p.Namespace, Data: data})
			c.e.close(closeMalformed)
			return
		}
		c.connect(p)
	case socketio.Disconnect:
		if s := c.socket(p.Namespace); s != nil {
			c.removeSocket(s, false)
		}
	case socketio.Event, socketio.BinaryEvent:
		if s := c.socket(p.Namespace); s != nil && s.isConnected() {
			s.onEvent(p, parts)
		} else {
			c.e.log().Debug("event for a namespace not connected", "namespace", p.Namespace)
		}
	case socketio.Ack, socketio.BinaryAck:
		if s := c.socket(p.Namespace); s != nil {
			s.onAck(p, parts)
		}
	default: // CONNECT_ERROR from a client, binary packets
		c.e.malformed(errUnexpectedPacket)
	}
}

func (c *sioConn) socket(ns string) *socket {
	c.e.mu.Lock()
	defer c.e.mu.Unlock()
	return c.sockets[ns]
}

// connectError answers a CONNECT with a CONNECT_ERROR; the engine stays open.
// maxRefusals bounds the CONNECTs refused on one engine connection: a
// client may retry with a fresh token, but not use one connection to try
// tokens (each costs the auth service a verification) without end.
const maxRefusals = 10

func (c *sioConn) connectError(ns, msg string) {
	c.e.g.metrics.handshake(msg)
	data, _ := json.Marshal(map[string]string{"message": msg})
	c.send(socketio.Packet{Type: socketio.ConnectError, Namespace: ns, Data: data})
	c.e.mu.Lock()
	c.refusals++
	tooMany := c.refusals >= maxRefusals
	c.e.mu.Unlock()
	if tooMany {
		c.e.log().Debug("closing after repeated refused CONNECTs")
		c.e.close(closeMalformed)
	}
}

// kick ends one socket on purpose: DISCONNECT first, then, when it was the
// engine's last socket, the connection.
func (c *sioConn) kick(s *socket) {
	c.removeSocket(s, true)
	c.e.mu.Lock()
	last := len(c.sockets) == 0
	c.e.mu.Unlock()
	if last {
		c.e.close(closeKick)
	}
}

// removeSocket detaches one socket (namespace DISCONNECT or kick) and frees
// its slot.
func (c *sioConn) removeSocket(s *socket, notify bool) {
	c.e.mu.Lock()
	if c.sockets[s.ns] != s {
		c.e.mu.Unlock()
		return
	}
	delete(c.sockets, s.ns)
	wasConnected := s.markClosed()
	if notify && wasConnected {
		c.e.sendLocked(engineio.Packet{Type: engineio.Message, Data: socketio.Packet{Type: socketio.Disconnect, Namespace: s.ns}.Encode()})
	}
	idle := len(c.sockets) == 0 && !c.e.closedLocked()
	c.e.mu.Unlock()
	if idle {
		// An engine without sockets holds no slot: it must join a namespace
		// again within connect_timeout or be closed.
		c.e.g.sched.Set(timerKey{e: c.e, kind: timerConnect}, time.Now().Add(c.e.g.cfg.ConnectTimeout))
	}
	if wasConnected {
		c.e.g.hub.removeSocket(s, true)
	}
}
