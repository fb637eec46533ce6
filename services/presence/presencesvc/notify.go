package presencesvc

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/client"
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

// changed announces one change of a user's connections: u is the written
// update and c the connection that came (connected) or went. The caller
// holds the user's lock, so this instance sends a user's updates in the
// order of its writes; those of other instances may cross them on the way,
// and each update carries its revision so that the gateway keeps the
// newest (api.HeaderRevision).
func (s *Service) changed(u updated, c api.Conn, connected bool) {
	if s.cfg.ConnectionsEvents && len(u.conns) > 0 {
		s.sendConnections(u.conns, u.rev)
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

// sendConnections gives every connection the list of the user's others,
// as of revision rev of the user's key.
func (s *Service) sendConnections(conns []api.Conn, rev uint64) {
	pub := make([]PublicConn, len(conns))
	for i, c := range conns {
		pub[i] = publicConn(c)
	}
	revision := strconv.FormatUint(rev, 10)
	for i, c := range conns {
		others := make([]PublicConn, 0, len(pub)-1)
		others = append(others, pub[:i]...)
		others = append(others, pub[i+1:]...)
		err := s.sendConnection(c.SocketID, others, revision)
		if err != nil {
			s.log.Warn("send connections", "socket", c.SocketID, "err", err)
		}
	}
}

func (s *Service) sendConnection(socketID string, others []PublicConn, revision string) error {
	subj, err := subject.OutConn(socketID)
	if err != nil {
		return fmt.Errorf("build subject: %w", err)
	}
	m, err := client.DeliveryMsg(subj, api.EventConnections, others)
	if err != nil {
		return err
	}
	m.Header.Set(api.HeaderRevision, revision)
	return s.nc.PublishMsg(m)
}
