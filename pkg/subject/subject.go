// Package subject is the only place where NATS subject strings are built.
//
// Public subjects start with "sb.". Any id placed in a subject is encoded into
// exactly one subject token by [Encode]: ids made only of [A-Za-z0-9_-] (1..128
// bytes) are used as they are; every other id becomes "~" followed by the
// unpadded base64url encoding of its bytes. Plain ids never start with "~", so
// the scheme is reversible ([Decode]) and no id, however crafted, can produce a
// ".", "*", ">" or white space in a subject.
package subject

import (
	"encoding/base64"
	"errors"
	"strings"
)

// Prefix starts every Switchboard subject.
const Prefix = "sb"

// MaxPlainLen is the longest id that is used without encoding.
const MaxPlainLen = 128

// MaxIDLen bounds any id accepted by Encode (before encoding).
const MaxIDLen = 1024

// ErrInvalidID is returned for ids that cannot be placed in a subject.
var ErrInvalidID = errors.New("invalid id")

const encodedMark = '~'

// Strict decoding rejects non-zero trailing bits, so every id has exactly one
// encoded form.
var b64 = base64.RawURLEncoding.Strict()

func isPlain(id string) bool {
	return len(id) > 0 && len(id) <= MaxPlainLen && tokenChars(id)
}

// tokenChars reports whether s holds only [A-Za-z0-9_-], which is also the
// base64url alphabet.
func tokenChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// Encode turns an id into a single subject token. Empty ids and ids longer
// than MaxIDLen are rejected.
func Encode(id string) (string, error) {
	if id == "" || len(id) > MaxIDLen {
		return "", ErrInvalidID
	}
	if isPlain(id) {
		return id, nil
	}
	return string(encodedMark) + b64.EncodeToString([]byte(id)), nil
}

// Decode reverses Encode.
func Decode(token string) (string, error) {
	if token == "" {
		return "", ErrInvalidID
	}
	if token[0] != encodedMark {
		if !isPlain(token) {
			return "", ErrInvalidID
		}
		return token, nil
	}
	// The decoder skips '\r' and '\n': only the alphabet itself is accepted.
	if !tokenChars(token[1:]) {
		return "", ErrInvalidID
	}
	raw, err := b64.DecodeString(token[1:])
	if err != nil || len(raw) == 0 || len(raw) > MaxIDLen {
		return "", ErrInvalidID
	}
	id := string(raw)
	if isPlain(id) { // a plain id is never encoded: keep the mapping one-to-one
		return "", ErrInvalidID
	}
	return id, nil
}

func join(parts ...string) string { return strings.Join(parts, ".") }

func enc(ids ...string) ([]string, error) {
	out := make([]string, len(ids))
	for i, id := range ids {
		t, err := Encode(id)
		if err != nil {
			return nil, err
		}
		out[i] = t
	}
	return out, nil
}

// ---- public delivery subjects (service -> clients) ----

// OutUser addresses every connection of a user.
func OutUser(uid string) (string, error) {
	t, err := enc(uid)
	if err != nil {
		return "", err
	}
	return join(Prefix, "out", "user", t[0]), nil
}

// OutDevice addresses every connection of one device of a user.
func OutDevice(uid, deviceID string) (string, error) {
	t, err := enc(uid, deviceID)
	if err != nil {
		return "", err
	}
	return join(Prefix, "out", "device", t[0], t[1]), nil
}

// OutDeviceAll matches every device subject of one user (a subscription).
func OutDeviceAll(uid string) (string, error) {
	t, err := enc(uid)
	if err != nil {
		return "", err
	}
	return join(Prefix, "out", "device", t[0], "*"), nil
}

// OutConn addresses one connection (socket id).
func OutConn(socketID string) (string, error) {
	t, err := enc(socketID)
	if err != nil {
		return "", err
	}
	return join(Prefix, "out", "conn", t[0]), nil
}

// OutAll addresses every connection.
const OutAll = Prefix + ".out.all"

// Target is what a delivery subject addresses.
type Target struct {
	Kind     string // "user", "device", "conn" or "all"
	UserID   string
	DeviceID string
	SocketID string
}

// ParseOut parses a delivery subject built by the Out* functions.
func ParseOut(subj string) (Target, error) {
	p := strings.Split(subj, ".")
	if len(p) < 3 || p[0] != Prefix || p[1] != "out" {
		return Target{}, errors.New("not a delivery subject")
	}
	var err error
	t := Target{Kind: p[2]}
	switch {
	case t.Kind == "all" && len(p) == 3:
	case t.Kind == "user" && len(p) == 4:
		t.UserID, err = Decode(p[3])
	case t.Kind == "conn" && len(p) == 4:
		t.SocketID, err = Decode(p[3])
	case t.Kind == "device" && len(p) == 5:
		if t.UserID, err = Decode(p[3]); err == nil {
			t.DeviceID, err = Decode(p[4])
		}
	default:
		return Target{}, errors.New("not a delivery subject")
	}
	if err != nil {
		return Target{}, err
	}
	return t, nil
}

// ---- public client-event subjects (gateway -> services) ----

// In is the subject a client event is published on.
func In(event string) (string, error) {
	t, err := enc(event)
	if err != nil {
		return "", err
	}
	return join(Prefix, "in", t[0]), nil
}

// IsInbox reports whether subj is a reply inbox: "_INBOX." or a
// per-service prefix "_INBOX_<name>." followed by at least one token. The
// gateway publishes replies (client acks, errors) only to inboxes, never
// to a subject a requester chose otherwise.
func IsInbox(subj string) bool {
	rest, ok := strings.CutPrefix(subj, "_INBOX")
	if !ok {
		return false
	}
	if rest, ok = strings.CutPrefix(rest, "_"); ok {
		name, after, found := strings.Cut(rest, ".")
		if !found || name == "" || !isPlain(name) {
			return false
		}
		rest = "." + after
	}
	return strings.HasPrefix(rest, ".") && len(rest) > 1 && !strings.ContainsAny(rest, " \t\r\n*>") && !strings.Contains(rest, "..") && !strings.HasSuffix(rest, ".")
}

// InAll matches every client event (a subscription).
const InAll = Prefix + ".in.*"

// EventFromIn returns the event name of an In subject.
func EventFromIn(subj string) (string, error) {
	p := strings.Split(subj, ".")
	if len(p) != 3 || p[0] != Prefix || p[1] != "in" {
		return "", errors.New("not a client-event subject")
	}
	return Decode(p[2])
}

// ---- internal subjects ----

// Micro service endpoints.
const (
	AuthVerify       = Prefix + ".auth.verify"
	PresenceAdmit    = Prefix + ".presence.admit"
	PresenceRelease  = Prefix + ".presence.release"
	PresenceList     = Prefix + ".presence.list"
	PresenceReset    = Prefix + ".presence.reset"
	TimerListAPI     = Prefix + ".timer.list"
	GatewayHeartbeat = Prefix + ".gw.heartbeat"
	// GatewayAddresses carries each gateway's engine counts of its busiest
	// client addresses, so that the per-address cap holds across gateways.
	GatewayAddresses = Prefix + ".gw.ips"
)

// Lifecycle fan-out events published by presence.
const (
	EventConnected    = Prefix + ".event.connected"
	EventDisconnected = Prefix + ".event.disconnected"
)

// Timer subjects. Edges (a timer's `0` tick and its `timerDone`) are
// published into the timer events stream on TimerEdge; the stream stores each
// once (message id deduplication) and republishes it to the device's
// OutDevice subject (TimerEdgeRepublish). Events for backend services are
// stored on TimerEvent subjects.
const (
	// TimerEdges matches every edge subject (the stream's republish source).
	TimerEdges = Prefix + ".timer.edge.*.*"
	// TimerEdgeRepublish maps an edge subject onto the device's delivery
	// subject (a JetStream subject transform).
	TimerEdgeRepublish = Prefix + ".out.device.{{wildcard(1)}}.{{wildcard(2)}}"
	// TimerEvents matches every timer event for backend services.
	TimerEvents = Prefix + ".timer.event.>"
)

// Kinds of timer events for backend services (the third token of a
// TimerEvent subject).
const (
	TimerStarted = "started"
	TimerStopped = "stopped"
	TimerDone    = "done"
)

// TimerEdge is where the edges of one device's timer are published.
func TimerEdge(uid, deviceID string) (string, error) {
	t, err := enc(uid, deviceID)
	if err != nil {
		return "", err
	}
	return join(Prefix, "timer", "edge", t[0], t[1]), nil
}

// TimerEvent is the subject of one kind of timer event (TimerStarted,
// TimerStopped, TimerDone) of a device: sb.timer.event.<kind>.<uid>.<deviceId>.
func TimerEvent(kind, uid, deviceID string) (string, error) {
	switch kind {
	case TimerStarted, TimerStopped, TimerDone:
	default:
		return "", errors.New("unknown timer event kind")
	}
	t, err := enc(uid, deviceID)
	if err != nil {
		return "", err
	}
	return join(Prefix, "timer", "event", kind, t[0], t[1]), nil
}

// GatewayControl is the control subject of one gateway instance (disconnect
// orders and, later, forwarded transport requests).
func GatewayControl(gatewayID, op string) (string, error) {
	t, err := enc(gatewayID, op)
	if err != nil {
		return "", err
	}
	return join(Prefix, "gw", t[0], t[1]), nil
}

// Gateway control operations.
const (
	OpDisconnect = "disconnect"
	// OpSockets lists the gateway's sockets (for presence's
	// reconciliation).
	OpSockets = "sockets"
	// OpStatus is the endpoint of the gateway's micro service (nats micro
	// ls, nats micro stats).
	OpStatus = "status"
)

// EngineRequest is where the gateway holding a long-polling session answers
// the HTTP requests that other gateways received for it.
func EngineRequest(engineID string) (string, error) {
	t, err := enc(engineID)
	if err != nil {
		return "", err
	}
	return join(Prefix, "engine", t[0]), nil
}

// JetStream KV keys accept [-/_=.A-Za-z0-9] only, so a KV key token writes
// the "~" of an encoded id as "=" (used by neither plain ids nor base64url).
const kvMark = '='

// KeyToken encodes an id into one JetStream KV key token.
func KeyToken(id string) (string, error) {
	t, err := Encode(id)
	if err != nil {
		return "", err
	}
	if t[0] == encodedMark {
		t = string(kvMark) + t[1:]
	}
	return t, nil
}

// IDFromKeyToken reverses KeyToken.
func IDFromKeyToken(t string) (string, error) {
	if t != "" && t[0] == kvMark {
		t = string(encodedMark) + t[1:]
	} else if t != "" && t[0] == encodedMark {
		return "", ErrInvalidID
	}
	return Decode(t)
}

// RelayIn carries the frames of a WebSocket that reached another gateway
// than the one holding its Engine.IO session, towards the holder; RelayOut
// carries the holder's frames back.
func RelayIn(relayID string) (string, error) { return relay(relayID, "in") }

// RelayOut: see RelayIn.
func RelayOut(relayID string) (string, error) { return relay(relayID, "out") }

func relay(relayID, dir string) (string, error) {
	t, err := enc(relayID)
	if err != nil {
		return "", err
	}
	return join(Prefix, "relay", t[0], dir), nil
}
