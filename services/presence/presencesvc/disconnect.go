package presencesvc

import (
	"context"
	"encoding/json"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/client"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// Client-facing refusals of disconnectRequest. The same message (and code)
// answers an unknown socket and another user's socket, so the answer does
// not reveal whether another user's socket exists.
const (
	msgDisconnectArgs  = "disconnectRequest expects a socket id string"
	msgNotYours        = "Socket not found or not yours"
	msgUnavailable     = "Service unavailable"
	reasonDisconnectRq = "disconnectRequest"
)

// onDisconnectRequest serves the disconnectRequest client event: it orders
// the gateway holding the named socket to close it, if the socket belongs to
// the requesting user. The gateway then releases it, which sends the
// `connections` update.
func (s *Service) onDisconnectRequest(m *nats.Msg) {
	ev, err := client.ParseEvent(s.nc, m)
	if err != nil {
		// The body is not a JSON array: answer from the headers alone.
		ev, err = client.ParseEvent(s.nc, &nats.Msg{Subject: m.Subject, Reply: m.Reply, Header: m.Header})
		if err != nil {
			s.log.Warn("unparsable disconnectRequest", "subject", m.Subject, "err", err)
			return
		}
		s.fail(ev, api.CodeBadRequest, msgDisconnectArgs)
		return
	}
	var sid string
	if len(ev.Args) == 0 || json.Unmarshal(ev.Args[0], &sid) != nil || sid == "" {
		s.fail(ev, api.CodeBadRequest, msgDisconnectArgs)
		return
	}
	key, err := userKey(ev.UserID)
	if err != nil {
		s.fail(ev, api.CodeForbidden, msgNotYours)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	conns, _, err := s.load(ctx, key)
	if err != nil {
		s.log.Error("disconnectRequest", "err", err)
		s.fail(ev, api.CodeUnavailable, msgUnavailable)
		return
	}
	i := indexOf(conns, sid)
	if i < 0 {
		s.fail(ev, api.CodeForbidden, msgNotYours)
		return
	}
	if err := s.orderDisconnect(conns[i], reasonDisconnectRq); err != nil {
		s.log.Error("disconnectRequest", "err", err)
		s.fail(ev, api.CodeUnavailable, msgUnavailable)
		return
	}
	if err := ev.Ack(api.Status{Status: "ok"}); err != nil {
		s.log.Warn("ack disconnectRequest", "err", err)
	}
}

// orderDisconnect tells the gateway holding c to end it.
func (s *Service) orderDisconnect(c api.Conn, reason string) error {
	subj, err := subject.GatewayControl(c.Gateway, subject.OpDisconnect)
	if err != nil {
		return err
	}
	data, err := json.Marshal(api.DisconnectOrder{SocketID: c.SocketID, Reason: reason})
	if err != nil {
		return err
	}
	return s.nc.Publish(subj, data)
}

func (s *Service) fail(ev *client.Event, code int, msg string) {
	if err := ev.Fail(code, msg); err != nil {
		s.log.Warn("answer disconnectRequest", "err", err)
	}
}
