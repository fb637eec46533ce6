package gateway

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
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
	size := 0
	for i, id := range ids {
		c := h.sockets[id].conn
		// A page stays well within a NATS message, claims included.
		size += connJSONBytes + len(c.SocketID) + len(c.UserID) + len(c.DeviceID) + len(c.IP) + 2*len(c.UserAgent) + len(c.Gateway) + len(c.Claims)
		if i > 0 && size > maxSocketsPageBytes {
			more = true
			break
		}
		conns = append(conns, c)
	}
	h.mu.RUnlock()
	return conns, more
}

// connJSONBytes is the JSON of an api.Conn without its values (an
// overestimate); maxSocketsPageBytes bounds a page of sockets.
const (
	connJSONBytes       = 160
	maxSocketsPageBytes = 256 << 10
)

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
	h.g.cancelToken(s)
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
