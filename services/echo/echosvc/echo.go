// Package echosvc is an example backend service: it handles client events
// over NATS the way an application service would, and it is the target of
// the Socket.IO protocol tests.
//
//   - connect (to "/" or "/custom"): emits `auth` with the CONNECT auth
//     payload (forwarded only by gateways started with ForwardAuth);
//   - message: emits `message-back` with the same arguments, binary included;
//   - message-with-ack: acknowledges with the same arguments.
//
// It reads every client event through one queue subscription, so it handles
// a socket's events in the order the gateway published them.
package echosvc

import (
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/client"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// Namespaces are the namespaces the echo service greets.
var Namespaces = []string{"/", "/custom"}

// Service is a running echo service.
type Service struct {
	log *slog.Logger
	nc  *nats.Conn
	cl  *client.Client
	sub *nats.Subscription
}

// Start subscribes the echo service to every client event.
func Start(log *slog.Logger, nc *nats.Conn) (*Service, error) {
	s := &Service{log: log, nc: nc, cl: client.New(nc)}
	sub, err := nc.QueueSubscribe(subject.InAll, "echo", s.handle)
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subject.InAll, err)
	}
	if err := nc.Flush(); err != nil {
		return nil, fmt.Errorf("flush: %w", err)
	}
	s.sub = sub
	log.Info("echo service started", "subject", subject.InAll)
	return s, nil
}

// Stop unsubscribes.
func (s *Service) Stop() error { return s.sub.Unsubscribe() }

func greeted(ns string) bool {
	for _, n := range Namespaces {
		if n == ns {
			return true
		}
	}
	return false
}

func (s *Service) handle(m *nats.Msg) {
	ev, err := client.ParseEvent(s.nc, m)
	if err != nil {
		s.log.Warn("bad client event", "subject", m.Subject, "err", err)
		return
	}
	switch ev.Name {
	case api.EventConnect:
		if !greeted(ev.Namespace) {
			return
		}
		auth := json.RawMessage(`{}`)
		if len(ev.Args) > 0 {
			auth = ev.Args[0]
		}
		err = s.cl.NotifyConnArgs(ev.SocketID, "auth", auth)
	case "message":
		err = s.cl.NotifyConnArgs(ev.SocketID, "message-back", ev.Args...)
	case "message-with-ack":
		args := make([]any, len(ev.Args))
		for i, a := range ev.Args {
			args[i] = a
		}
		err = ev.Ack(args...)
	default:
		if ev.WantsAck() {
			err = ev.Fail(api.CodeNotFound, "unknown event "+ev.Name)
		}
	}
	if err != nil {
		s.log.Warn("answer client event", "event", ev.Name, "err", err)
	}
}
