package gateway

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/engineio"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/socketio"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// CONNECT_ERROR messages of CONTRACT §2.1 (exact: clients match on them).
const (
	msgNoToken          = "Token not provided"
	msgBadScheme        = "Invalid authentication method. Only Bearer is supported."
	msgUnauthorized     = "Unauthorized"
	msgTooMany          = "Too many connections"
	msgUnavailable      = "Service unavailable"
	msgInvalidNamespace = "Invalid namespace"
	msgInvalidDevice    = "Invalid deviceId"
	// Not in the contract's table: sent before closing an engine that
	// sent more than maxConnectsPerMinute CONNECTs.
	msgTooManyAttempts = "Too many connection attempts"
)

const maxDeviceIDLen = 128

// credentials are the handshake inputs a CONNECT is judged on.
type credentials struct {
	authToken  json.RawMessage // CONNECT auth payload field "token" (nil when absent)
	header     string          // Authorization header of the HTTP handshake
	query      string          // handshake query parameter "token"
	allowQuery bool
}

// token finds the token (CONTRACT §2.1) or returns the CONNECT_ERROR message.
func (c credentials) token() (string, string) {
	raw := ""
	if len(c.authToken) > 0 && string(c.authToken) != "null" {
		var s string
		if c.authToken[0] != '"' || json.Unmarshal(c.authToken, &s) != nil {
			return "", msgUnauthorized
		}
		raw = strings.TrimSpace(s)
	}
	if raw == "" {
		raw = strings.TrimSpace(c.header)
	}
	if raw == "" && c.allowQuery {
		raw = strings.TrimSpace(c.query)
	}
	if raw == "" || raw == "Bearer" {
		return "", msgNoToken
	}
	if i := strings.IndexAny(raw, " \t"); i >= 0 {
		if raw[:i] != "Bearer" {
			return "", msgBadScheme
		}
		raw = strings.TrimSpace(raw[i+1:])
		if raw == "" {
			return "", msgNoToken
		}
		if strings.ContainsAny(raw, " \t") {
			return "", msgUnauthorized
		}
	}
	return raw, ""
}

// validDeviceID reports whether id is 1–128 characters of [A-Za-z0-9._:-].
func validDeviceID(id string) bool {
	if len(id) == 0 || len(id) > maxDeviceIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

// deviceID picks the device id: query first, then the auth payload, else the
// socket id. ok is false when a given id is invalid.
func deviceID(query []string, auth json.RawMessage, socketID string) (string, bool) {
	if len(query) > 0 {
		return query[0], validDeviceID(query[0])
	}
	if len(auth) > 0 && string(auth) != "null" {
		var s string
		if auth[0] != '"' || json.Unmarshal(auth, &s) != nil {
			return "", false
		}
		return s, validDeviceID(s)
	}
	return socketID, true
}

// connect runs the handshake of CONTRACT §2.1 for one CONNECT packet:
// identify, subscribe, admit, then `40`. A refusal is a CONNECT_ERROR and
// leaves the engine open for another CONNECT.
func (c *sioConn) connect(p socketio.Packet) {
	g := c.e.g
	ns := p.Namespace
	if !g.nsAllow[ns] {
		c.connectError(ns, msgInvalidNamespace)
		return
	}
	var auth map[string]json.RawMessage
	if len(p.Data) > 0 {
		if err := json.Unmarshal(p.Data, &auth); err != nil {
			c.e.malformed(err)
			return
		}
	}
	c.e.mu.Lock()
	if c.e.closedLocked() || c.sockets[ns] != nil {
		c.e.mu.Unlock() // a CONNECT for a namespace already joined (or joining) is ignored
		return
	}
	s := &socket{e: c.e, ns: ns, id: newID(), acks: map[uint64]string{}}
	c.sockets[ns] = s
	c.e.mu.Unlock()

	id, msg := c.identify(s, auth)
	if msg == "" {
		msg = c.admit(s, id.UserID)
	}
	if msg != "" {
		c.e.mu.Lock()
		if c.sockets[ns] == s {
			delete(c.sockets, ns)
		}
		s.state = stateClosed
		c.e.mu.Unlock()
		c.connectError(ns, msg)
		return
	}

	c.e.mu.Lock()
	if c.e.closedLocked() || s.state != statePending {
		c.e.mu.Unlock()
		g.hub.removeSocket(s, true) // the client left during the handshake
		return
	}
	s.state = stateConnected
	sid, _ := json.Marshal(map[string]string{"sid": s.id})
	c.e.sendLocked(engineio.Packet{Type: engineio.Message, Data: socketio.Packet{Type: socketio.Connect, Namespace: ns, Data: sid}.Encode()})
	c.e.sendLocked(s.pending...)
	s.pending = nil
	c.e.mu.Unlock()
	g.sched.Cancel(timerKey{e: c.e, kind: timerConnect})
	g.scheduleToken(s, id.Expires)
	connectArgs := json.RawMessage("[]")
	if g.opts.forwardAuth && len(p.Data) > 0 {
		connectArgs = socketio.ArrayPayload(p.Data)
	}
	g.metrics.handshake("")
	s.announced.Store(true)
	s.publishLifecycle(api.EventConnect, connectArgs)
	c.e.log().Debug("socket connected", "socket", s.id, "user", id.UserID, "device", s.conn.DeviceID, "namespace", ns)
}

// identify settles who is connecting: the device id, and the user from the
// auth service (the socket id without auth). It fills s.conn, or returns
// the CONNECT_ERROR message.
func (c *sioConn) identify(s *socket, auth map[string]json.RawMessage) (api.VerifyReply, string) {
	g := c.e.g
	devID, ok := deviceID(c.e.query["deviceId"], auth["deviceId"], s.id)
	if !ok {
		return api.VerifyReply{}, msgInvalidDevice
	}
	id := api.VerifyReply{UserID: s.id}
	if !g.opts.noAuth {
		v, ok := c.e.verdictFor(auth["token"]) // checked by the gateway that forwarded it
		if !ok {
			v = g.verify(g.ctx, credentials{
				authToken:  auth["token"],
				header:     c.e.header.Get("Authorization"),
				query:      first(c.e.query["token"]),
				allowQuery: g.cfg.AllowQueryToken,
			})
		}
		if v.Msg != "" {
			return id, v.Msg
		}
		id = *v.ID
		s.token.Store(newTokenState(id))
	}
	s.conn = api.Conn{
		SocketID:  s.id,
		UserID:    id.UserID,
		DeviceID:  devID,
		IP:        c.e.ip,
		UserAgent: c.e.userAgent,
		CreatedAt: time.Now().UTC().Truncate(time.Millisecond),
		Gateway:   g.id,
		Claims:    id.Claims,
	}
	return id, ""
}

// admit subscribes the socket's delivery subjects, then takes its slot in
// presence, or returns the CONNECT_ERROR message. Subscribing comes first:
// presence's `connections` update for this socket is published after the
// admit and must not be missed.
func (c *sioConn) admit(s *socket, uid string) string {
	g := c.e.g
	if err := g.hub.addSocket(s); err != nil {
		c.e.log().Warn("subscribe socket", "err", err)
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
	c.e.log().Warn("admit connection", "err", err)
	return msgUnavailable
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}
