package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/engineio"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/socketio"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// Tokens travel on the bus only to the auth service. A gateway that passes
// a client's input on to the gateway holding its session (a forwarded
// polling POST, a relayed WebSocket frame) first verifies the token of each
// CONNECT in it, puts "sb-verified:<n>" in the token's place and sends the
// outcomes in the header Sb-Verified. The holder takes the outcome for such
// a token instead of asking auth. Only gateways may publish on sb.engine.>
// and sb.relay.> (the shipped NATS permissions), so the header is the
// word of a gateway; a client that writes "sb-verified:0" itself has it
// verified as a token, and refused.

const (
	verifiedPrefix = "sb-verified:"
	headerVerified = "Sb-Verified"
)

// tokenKey is what a CONNECT carrying a token has in its body.
var tokenKey = []byte(`"token"`)

// verdict is the outcome of one verification: the identity, or the
// CONNECT_ERROR message.
type verdict struct {
	ID  *api.VerifyReply `json:"id,omitempty"`
	Msg string           `json:"msg,omitempty"`
}

// verify finds the token among c and asks auth about it.
func (g *Gateway) verify(ctx context.Context, c credentials) verdict {
	token, msg := c.token()
	if msg != "" {
		return verdict{Msg: msg}
	}
	start := time.Now()
	var k tokenHash
	if g.authCache != nil {
		k = hashToken(token)
	}
	if id, ok := g.authCache.get(k, start); ok {
		g.metrics.authCached.Inc()
		return verdict{ID: &id}
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.RequestTimeout)
	defer cancel()
	id, err := natsx.Request[api.VerifyReply](ctx, g.nc, subject.AuthVerify, api.VerifyRequest{Token: token})
	g.metrics.request(reqVerify, start)
	switch code := natsx.CodeOf(err); {
	case err == nil:
		g.authCache.put(k, id, start)
		return verdict{ID: &id}
	case code == api.CodeUnauthorized || code == api.CodeBadRequest:
		return verdict{Msg: msgUnauthorized}
	default:
		g.log.Warn("verify token", "err", err)
		return verdict{Msg: msgUnavailable}
	}
}

// stripPacket replaces the token of a CONNECT, or of a refreshToken event,
// in the Engine.IO packet p with a reference to its verdict, appended to vs.
func (g *Gateway) stripPacket(ctx context.Context, p engineio.Packet, vs *[]verdict) engineio.Packet {
	if p.Type != engineio.Message || p.Binary || g.opts.noAuth {
		return p
	}
	sp, err := socketio.Decode(p.Data)
	if err != nil || len(sp.Data) == 0 {
		return p
	}
	switch sp.Type {
	case socketio.Connect:
		data, ok := g.stripToken(ctx, sp.Data, vs)
		if !ok {
			return p
		}
		sp.Data = data
	case socketio.Event, socketio.BinaryEvent:
		name, args, err := sp.Event()
		if err != nil || name != api.EventRefreshToken || len(args) == 0 {
			return p
		}
		data, ok := g.stripToken(ctx, args[0], vs)
		if !ok {
			return p
		}
		args[0] = data
		sp.Data = socketio.EventPayload(name, args...)
	default:
		return p
	}
	return engineio.Packet{Type: engineio.Message, Data: sp.Encode()}
}

// stripToken verifies the "token" of the JSON object obj and returns obj
// with the token replaced by its verdict's reference; ok is false when obj
// holds no token.
func (g *Gateway) stripToken(ctx context.Context, obj json.RawMessage, vs *[]verdict) (json.RawMessage, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(obj, &m) != nil {
		return nil, false
	}
	tok, ok := m["token"]
	if !ok || string(tok) == "null" {
		return nil, false
	}
	*vs = append(*vs, g.verify(ctx, credentials{authToken: tok}))
	m["token"], _ = json.Marshal(verifiedPrefix + strconv.Itoa(len(*vs)-1))
	out, _ := json.Marshal(m)
	return out, true
}

// stripPayload is stripPacket for every packet of a polling payload; it
// returns the payload unchanged when there was no token.
func (g *Gateway) stripPayload(ctx context.Context, body []byte) ([]byte, []verdict) {
	if !bytes.Contains(body, tokenKey) {
		return body, nil
	}
	ps, err := engineio.DecodePayload(body)
	if err != nil {
		return body, nil // the holder answers the malformed payload
	}
	var vs []verdict
	for i, p := range ps {
		ps[i] = g.stripPacket(ctx, p, &vs)
	}
	if len(vs) == 0 {
		return body, nil
	}
	return engineio.EncodePayload(ps), vs
}

// stripFrame is stripPacket for a relayed text frame.
func (g *Gateway) stripFrame(ctx context.Context, frame []byte) ([]byte, []verdict) {
	if !bytes.Contains(frame, tokenKey) {
		return frame, nil
	}
	p, err := engineio.DecodeFrame(frame, false)
	if err != nil {
		return frame, nil
	}
	var vs []verdict
	p = g.stripPacket(ctx, p, &vs)
	if len(vs) == 0 {
		return frame, nil
	}
	return p.Text(), vs
}

// setVerdicts puts verdicts in m's header.
func setVerdicts(m *nats.Msg, vs []verdict) {
	if len(vs) > 0 {
		b, _ := json.Marshal(vs)
		m.Header.Set(headerVerified, string(b))
	}
}

// verdictsOf reads the verdicts of a message from another gateway.
func verdictsOf(m *nats.Msg) []verdict {
	raw := m.Header.Get(headerVerified)
	if raw == "" {
		return nil
	}
	var vs []verdict
	if json.Unmarshal([]byte(raw), &vs) != nil {
		return nil
	}
	return vs
}

// verdictFor finds the verdict a CONNECT's token refers to, among those
// that came with the input being handled (e.inMu is held).
func (e *engine) verdictFor(authToken json.RawMessage) (verdict, bool) {
	if len(e.verdicts) == 0 {
		return verdict{}, false
	}
	var s string
	if json.Unmarshal(authToken, &s) != nil {
		return verdict{}, false
	}
	n, err := strconv.Atoi(strings.TrimPrefix(s, verifiedPrefix))
	if !strings.HasPrefix(s, verifiedPrefix) || err != nil || n < 0 || n >= len(e.verdicts) {
		return verdict{}, false
	}
	v := e.verdicts[n]
	if v.ID == nil && v.Msg == "" {
		return verdict{}, false
	}
	return v, true
}
