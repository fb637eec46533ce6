package gateway

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/engineio"
	"github.com/switchboard-rt/switchboard/pkg/socketio"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

func (h *hub) deliverDevice(uid string, m *nats.Msg) {
	t, err := subject.ParseOut(m.Subject)
	if err != nil || t.Kind != "device" || t.UserID != uid {
		h.g.log.Warn("bad device subject", "subject", m.Subject)
		return
	}
	h.g.deliver(m, h.userSockets(uid, t.DeviceID))
}

func (h *hub) deliverAll(m *nats.Msg) {
	h.mu.RLock()
	out := make([]*socket, 0, len(h.sockets))
	for _, s := range h.sockets {
		out = append(out, s)
	}
	h.mu.RUnlock()
	h.g.deliver(m, out)
}

// deliver sends one sb.out message to its local recipients. The packet is
// encoded once per namespace, down to its WebSocket frame, not per
// recipient.
func (g *Gateway) deliver(m *nats.Msg, to []*socket) {
	name := header(m, api.HeaderEvent)
	if name == "" || socketio.Reserved(name) {
		g.log.Warn("delivery without a valid Sb-Event header dropped", "subject", m.Subject, "event", name)
		g.respondError(m.Reply, api.CodeBadRequest, "missing or reserved "+api.HeaderEvent+" header")
		return
	}
	args := deliveryArgs(m.Data)
	if header(m, api.HeaderArgs) == api.ArgsArray {
		var list []json.RawMessage
		if json.Unmarshal(m.Data, &list) != nil {
			g.log.Warn("delivery with Sb-Args: array whose body is not an array dropped", "subject", m.Subject)
			g.respondError(m.Reply, api.CodeBadRequest, "body is not a JSON array")
			return
		}
		args = list
	}
	if m.Reply != "" && !subject.IsInbox(m.Reply) {
		// A client's ack is published only to a reply inbox, never to a
		// subject the requester chose otherwise.
		g.log.Warn("delivery asking an ack on a reply subject that is not an inbox dropped", "subject", m.Subject, "reply", m.Reply)
		return
	}
	g.metrics.out.Add(float64(len(to)))
	if m.Reply != "" {
		for _, s := range to {
			s.emitWithAck(name, args, m.Reply)
		}
		return
	}
	var rev uint64
	// Only presence sets it, in its canonical case: no case-blind search
	// of the headers on every delivery without it.
	if v := m.Header.Get(api.HeaderRevision); v != "" {
		var err error
		if rev, err = strconv.ParseUint(v, 10, 64); err != nil {
			g.log.Warn("delivery with a bad "+api.HeaderRevision+" header dropped", "subject", m.Subject, "revision", v)
			return
		}
	}
	payload := socketio.EventPayload(name, args...)
	var byNS map[string][]engineio.Packet
	for _, s := range to {
		ps, ok := byNS[s.ns]
		if !ok {
			ps = sioPackets(socketio.Event, s.ns, false, 0, payload)
			if len(to) > 1 {
				for i := range ps {
					ps[i] = ps[i].Shared()
				}
			}
			if byNS == nil {
				byNS = map[string][]engineio.Packet{}
			}
			byNS[s.ns] = ps
		}
		s.deliverAt(rev, ps...)
	}
}

// header reads a delivery header, whatever the case of its name
// (`nats pub -H sb-event:…` works too).
func header(m *nats.Msg, key string) string {
	if v := m.Header.Get(key); v != "" {
		return v
	}
	for k, v := range m.Header {
		if strings.EqualFold(k, key) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

// deliveryArgs reads a delivery body: empty → no argument, JSON → that
// value, anything else → the text as a JSON string.
func deliveryArgs(data []byte) []json.RawMessage {
	switch {
	case len(bytes.TrimSpace(data)) == 0:
		return nil
	case json.Valid(data):
		return []json.RawMessage{data}
	}
	return []json.RawMessage{mustJSON(string(data))}
}

func (g *Gateway) respondError(reply string, code int, msg string) {
	if !subject.IsInbox(reply) {
		return
	}
	m := nats.NewMsg(reply)
	m.Header.Set(micro.ErrorCodeHeader, strconv.Itoa(code))
	m.Header.Set(micro.ErrorHeader, msg)
	_ = g.nc.PublishMsg(m)
}
