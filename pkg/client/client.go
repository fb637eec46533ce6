// Package client is the Go library other backend services use to talk to
// Switchboard over NATS: deliver events to users, devices and connections,
// and handle the events clients send.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/socketio"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// Publisher is the part of *nats.Conn the client needs.
type Publisher interface {
	PublishMsg(m *nats.Msg) error
	RequestMsgWithContext(ctx context.Context, m *nats.Msg) (*nats.Msg, error)
}

var _ Publisher = (*nats.Conn)(nil)

// Client delivers events to Socket.IO clients through Switchboard.
type Client struct{ nc Publisher }

// New wraps a NATS connection.
func New(nc Publisher) *Client { return &Client{nc: nc} }

// ErrEventName is returned for empty or reserved event names.
var ErrEventName = errors.New("invalid event name")

// DeliveryMsg builds the message that delivers event with payload to subj.
// payload is marshalled to JSON unless it is a json.RawMessage or []byte
// (sent as is); nil sends the event without arguments.
func DeliveryMsg(subj, event string, payload any) (*nats.Msg, error) {
	if event == "" || socketio.Reserved(event) {
		return nil, fmt.Errorf("%w: %q", ErrEventName, event)
	}
	var data []byte
	switch p := payload.(type) {
	case nil:
	case json.RawMessage:
		data = p
	case []byte:
		data = p
	default:
		var err error
		if data, err = json.Marshal(p); err != nil {
			return nil, fmt.Errorf("encode payload: %w", err)
		}
	}
	m := nats.NewMsg(subj)
	m.Header.Set(api.HeaderEvent, event)
	m.Data = data
	return m, nil
}

func (c *Client) publish(subj string, err error, event string, payload any) error {
	if err != nil {
		return fmt.Errorf("build subject: %w", err)
	}
	m, err := DeliveryMsg(subj, event, payload)
	if err != nil {
		return err
	}
	return c.nc.PublishMsg(m)
}

// NotifyConnArgs delivers an event with several arguments to one
// connection (the body is their JSON array, marked by Sb-Args: array).
func (c *Client) NotifyConnArgs(socketID, event string, args ...json.RawMessage) error {
	s, err := subject.OutConn(socketID)
	if err != nil {
		return fmt.Errorf("build subject: %w", err)
	}
	m, err := DeliveryMsg(s, event, socketio.ArrayPayload(args...))
	if err != nil {
		return err
	}
	m.Header.Set(api.HeaderArgs, api.ArgsArray)
	return c.nc.PublishMsg(m)
}

// NotifyUser delivers an event to every connection of a user.
func (c *Client) NotifyUser(userID, event string, payload any) error {
	s, err := subject.OutUser(userID)
	return c.publish(s, err, event, payload)
}

// NotifyDevice delivers an event to every connection of one device of a user.
func (c *Client) NotifyDevice(userID, deviceID, event string, payload any) error {
	s, err := subject.OutDevice(userID, deviceID)
	return c.publish(s, err, event, payload)
}

// NotifyConn delivers an event to one connection.
func (c *Client) NotifyConn(socketID, event string, payload any) error {
	s, err := subject.OutConn(socketID)
	return c.publish(s, err, event, payload)
}

// Broadcast delivers an event to every connection.
func (c *Client) Broadcast(event string, payload any) error {
	return c.publish(subject.OutAll, nil, event, payload)
}

// EmitWithAck delivers an event to one connection and waits for the client's
// acknowledgement, returning its arguments.
func (c *Client) EmitWithAck(ctx context.Context, socketID, event string, payload any) ([]json.RawMessage, error) {
	s, err := subject.OutConn(socketID)
	if err != nil {
		return nil, fmt.Errorf("build subject: %w", err)
	}
	m, err := DeliveryMsg(s, event, payload)
	if err != nil {
		return nil, err
	}
	reply, err := natsx.RequestMsg(ctx, c.nc, m)
	if err != nil {
		return nil, err
	}
	if e := natsx.ErrorFromMsg(reply); e != nil {
		return nil, e
	}
	var args []json.RawMessage
	if err := json.Unmarshal(reply.Data, &args); err != nil {
		return nil, fmt.Errorf("decode ack: %w", err)
	}
	return args, nil
}

// Event is a client event received on sb.in.<event>.
type Event struct {
	Name      string
	UserID    string
	DeviceID  string
	SocketID  string
	Namespace string
	// Claims are the claims of the client's token that auth passes on
	// (auth.claims), as one JSON object, verified; nil when none.
	Claims json.RawMessage
	// Args are the event's arguments (the message body is their JSON array).
	Args []json.RawMessage
	msg  *nats.Msg
	nc   Publisher
}

// ParseEvent reads a client event from a message of sb.in.<event>.
func ParseEvent(nc Publisher, m *nats.Msg) (*Event, error) {
	name, err := subject.EventFromIn(m.Subject)
	if err != nil {
		return nil, err
	}
	e := &Event{Name: name, msg: m, nc: nc}
	if m.Header != nil {
		e.UserID = m.Header.Get(api.HeaderUser)
		e.DeviceID = m.Header.Get(api.HeaderDevice)
		e.SocketID = m.Header.Get(api.HeaderSocket)
		e.Namespace = m.Header.Get(api.HeaderNamespace)
		if c := m.Header.Get(api.HeaderClaims); c != "" {
			if !json.Valid([]byte(c)) || c[0] != '{' {
				return nil, errors.New("decode claims: not a JSON object")
			}
			e.Claims = json.RawMessage(c)
		}
	}
	if len(m.Data) > 0 {
		if err := json.Unmarshal(m.Data, &e.Args); err != nil {
			return nil, fmt.Errorf("decode arguments: %w", err)
		}
	}
	return e, nil
}

// Claim decodes the claim name into v and reports whether the token had it.
func (e *Event) Claim(name string, v any) (bool, error) {
	if len(e.Claims) == 0 {
		return false, nil
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(e.Claims, &all); err != nil {
		return false, fmt.Errorf("decode claims: %w", err)
	}
	raw, ok := all[name]
	if !ok {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("decode claim %s: %w", name, err)
	}
	return true, nil
}

// WantsAck reports whether the client asked for an acknowledgement.
func (e *Event) WantsAck() bool { return e.msg.Reply != "" }

// Ack answers the client's acknowledgement with args (a no-op when the
// client asked none).
func (e *Event) Ack(args ...any) error {
	if !e.WantsAck() {
		return nil
	}
	raw := make([]json.RawMessage, len(args))
	for i, a := range args {
		b, err := json.Marshal(a)
		if err != nil {
			return fmt.Errorf("encode ack: %w", err)
		}
		raw[i] = b
	}
	return e.msg.Respond(socketio.ArrayPayload(raw...))
}

// Fail reports an error to the client: as the acknowledgement when it asked
// one (the gateway turns it into {"status":"error","message":...}), else as
// an `exception` event to the sending connection.
func (e *Event) Fail(code int, message string) error {
	if e.WantsAck() {
		m := nats.NewMsg(e.msg.Reply)
		m.Header.Set(micro.ErrorCodeHeader, strconv.Itoa(code))
		m.Header.Set(micro.ErrorHeader, message)
		return e.nc.PublishMsg(m)
	}
	if e.SocketID == "" {
		return nil
	}
	return New(e.nc).NotifyConn(e.SocketID, api.EventException, api.ErrorStatus(message))
}
