package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/engineio"
	"github.com/switchboard-rt/switchboard/pkg/socketio"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// hub indexes the gateway's live engines and sockets and owns their NATS
// interest: one subscription per socket (sb.out.conn) and, per user with at
// least one local socket, one for sb.out.user and one for sb.out.device.
type hub struct {
	g *Gateway

	mu      sync.RWMutex
	engs    map[string]*engine // by engine id
	sockets map[string]*socket // by socket id
	digest  uint64             // api.SocketDigest of the ids in sockets
	users   map[string]*userEntry

	releasing atomic.Int64 // releases in flight
}

type userEntry struct {
	sockets map[*socket]struct{}
	subs    []*nats.Subscription
}

func newHub(g *Gateway) *hub {
	return &hub{g: g, engs: map[string]*engine{}, sockets: map[string]*socket{}, users: map[string]*userEntry{}}
}

func (h *hub) addEngine(e *engine) {
	h.mu.Lock()
	h.engs[e.id] = e
	h.mu.Unlock()
}

// removeEngine forgets a closed engine and gives back its admission.
func (h *hub) removeEngine(e *engine) {
	h.mu.Lock()
	held := h.engs[e.id] == e
	if held {
		delete(h.engs, e.id)
	}
	h.mu.Unlock()
	if held {
		h.g.adm.release(e.ip)
	}
}

// engineCount is the number of open engines.
func (h *hub) engineCount() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.engs)
}

func (h *hub) engines() []*engine {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]*engine, 0, len(h.engs))
	for _, e := range h.engs {
		out = append(out, e)
	}
	return out
}

func (h *hub) engine(id string) *engine {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.engs[id]
}

// summary is the number of sockets and the digest of their ids.
func (h *hub) summary() (int, uint64) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.sockets), h.digest
}

// page lists the sockets after the id after, in id order, at most limit;
// more says whether others follow.
func (h *hub) page(after string, limit int) (conns []api.Conn, more bool) {
	h.mu.RLock()
	ids := make([]string, 0, len(h.sockets))
	for id := range h.sockets {
		if id > after {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	if len(ids) > limit {
		ids, more = ids[:limit], true
	}
	conns = make([]api.Conn, 0, len(ids))
	for _, id := range ids {
		conns = append(conns, h.sockets[id].conn)
	}
	h.mu.RUnlock()
	return conns, more
}

func (h *hub) socket(id string) *socket {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.sockets[id]
}

// addSocket registers s and subscribes its delivery subjects.
func (h *hub) addSocket(s *socket) error {
	connSubj, err := subject.OutConn(s.id)
	if err != nil {
		return err
	}
	if s.subConn, err = h.g.subscribe(connSubj, func(m *nats.Msg) { h.g.deliver(m, []*socket{s}) }, s.e.slow); err != nil {
		return err
	}
	uid := s.conn.UserID
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.users[uid] == nil {
		if err := h.subscribeUser(uid); err != nil {
			h.g.unsubscribe(s.subConn)
			s.subConn = nil
			return err
		}
	}
	u := h.users[uid]
	h.sockets[s.id] = s
	h.digest = api.SocketDigest(h.digest, s.id)
	u.sockets[s] = struct{}{}
	return nil
}

// subscribeUser adds the user's delivery subscriptions and entry; h.mu is
// held.
func (h *hub) subscribeUser(uid string) error {
	userSubj, err := subject.OutUser(uid)
	if err != nil {
		return err
	}
	devSubj, err := subject.OutDeviceAll(uid)
	if err != nil {
		return err
	}
	// A dropped delivery to the user ends the user's sockets here.
	slowAll := func() {
		for _, s := range h.userSockets(uid, "") {
			s.e.slow()
		}
	}
	u := &userEntry{sockets: map[*socket]struct{}{}}
	for _, sub := range []struct {
		subj string
		fn   func(*nats.Msg)
	}{
		{userSubj, func(m *nats.Msg) { h.g.deliver(m, h.userSockets(uid, "")) }},
		{devSubj, func(m *nats.Msg) { h.deliverDevice(uid, m) }},
	} {
		ns, err := h.g.subscribe(sub.subj, sub.fn, slowAll)
		if err != nil {
			for _, x := range u.subs {
				h.g.unsubscribe(x)
			}
			return err
		}
		u.subs = append(u.subs, ns)
	}
	h.users[uid] = u
	return nil
}

// removeSocket drops s's interest and, with release, frees its slot in
// presence (asynchronously; Stop waits for it).
func (h *hub) removeSocket(s *socket, release bool) {
	h.mu.Lock()
	if h.sockets[s.id] == s {
		delete(h.sockets, s.id)
		h.digest = api.SocketDigest(h.digest, s.id)
	}
	var drop []*nats.Subscription
	if u := h.users[s.conn.UserID]; u != nil {
		delete(u.sockets, s)
		if len(u.sockets) == 0 {
			drop = u.subs
			delete(h.users, s.conn.UserID)
		}
	}
	h.mu.Unlock()
	h.g.unsubscribe(s.subConn)
	for _, sub := range drop {
		h.g.unsubscribe(sub)
	}
	s.dropAcks()
	h.g.sched.Cancel(timerKey{s: s, kind: timerExpiry})
	if s.announced.Load() {
		s.publishLifecycle(api.EventDisconnect, json.RawMessage("[]"))
	}
	if release {
		h.releasing.Add(1)
		go func() {
			defer h.releasing.Add(-1)
			h.g.release(api.ReleaseRequest{SocketID: s.id, UserID: s.conn.UserID})
		}()
	}
}

// waitReleases waits until no release is in flight (sockets may still be
// closing while it waits, so this is a count, not a WaitGroup).
func (h *hub) waitReleases(ctx context.Context) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for h.releasing.Load() > 0 {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// userSockets returns the sockets of a user, of one device when deviceID is
// set.
func (h *hub) userSockets(uid, deviceID string) []*socket {
	h.mu.RLock()
	defer h.mu.RUnlock()
	u := h.users[uid]
	if u == nil {
		return nil
	}
	out := make([]*socket, 0, len(u.sockets))
	for s := range u.sockets {
		if deviceID == "" || s.conn.DeviceID == deviceID {
			out = append(out, s)
		}
	}
	return out
}

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
		s.deliver(ps...)
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
