package presencesvc

import (
	"context"
	"encoding/json"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// isoMillis is the createdAt format clients get: ISO-8601 in UTC with
// milliseconds, the form JavaScript's Date.prototype.toISOString produces.
const isoMillis = "2006-01-02T15:04:05.000Z07:00"

// PublicConn is one element of the client-facing `connections` event.
type PublicConn struct {
	SocketID  string `json:"socketId"`
	UserID    string `json:"userId"`
	DeviceID  string `json:"deviceId"`
	IP        string `json:"ip"`
	UserAgent string `json:"userAgent"`
	CreatedAt string `json:"createdAt"`
}

func publicConn(c api.Conn) PublicConn {
	p := c.Public()
	return PublicConn{
		SocketID:  p.SocketID,
		UserID:    p.UserID,
		DeviceID:  p.DeviceID,
		IP:        p.IP,
		UserAgent: p.UserAgent,
		CreatedAt: p.CreatedAt.UTC().Format(isoMillis),
	}
}

// convergeRounds bounds the re-sends of converge.
const convergeRounds = 3

// changed announces one change of a user's connections: u is the written
// update and c the connection that came (connected) or went. The caller
// holds the user's lock, so this instance sends a user's updates in the
// order of its writes.
func (s *Service) changed(ctx context.Context, u updated, c api.Conn, connected bool) {
	if s.cfg.ConnectionsEvents && len(u.conns) > 0 {
		s.sendConnections(u.conns)
		s.converge(ctx, u.key, u.rev)
	}
	subj := subject.EventDisconnected
	if connected {
		subj = subject.EventConnected
	}
	data, err := json.Marshal(api.LifecycleEvent{Conn: c})
	if err != nil {
		s.log.Error("encode lifecycle event", "err", err)
		return
	}
	if err := s.nc.Publish(subj, data); err != nil {
		s.log.Warn("publish lifecycle event", "subject", subj, "err", err)
	}
}

// converge keeps the last `connections` update of a user right when
// several presence instances change the user at once and their updates
// cross on the way. Once the update for revision rev has reached the server
// (flush), the key is read again: unchanged means any later change is sent
// after ours; changed means ours may have overtaken a newer update, so the
// current list is sent again (and checked the same way, a bounded number of
// times).
func (s *Service) converge(ctx context.Context, key string, rev uint64) {
	for range convergeRounds {
		if err := s.nc.FlushWithContext(ctx); err != nil {
			s.log.Warn("flush connections update", "err", err)
			return
		}
		conns, cur, err := s.load(ctx, key)
		if err != nil {
			s.log.Warn("re-read after connections update", "key", key, "err", err)
			return
		}
		if cur == rev {
			return
		}
		rev = cur
		s.sendConnections(conns)
	}
}

// sendConnections gives every connection the list of the user's others.
func (s *Service) sendConnections(conns []api.Conn) {
	pub := make([]PublicConn, len(conns))
	for i, c := range conns {
		pub[i] = publicConn(c)
	}
	for i, c := range conns {
		others := make([]PublicConn, 0, len(pub)-1)
		others = append(others, pub[:i]...)
		others = append(others, pub[i+1:]...)
		if err := s.client.NotifyConn(c.SocketID, api.EventConnections, others); err != nil {
			s.log.Warn("send connections", "socket", c.SocketID, "err", err)
		}
	}
}
