// Package api holds the message types and header names that Switchboard's
// services exchange over NATS. Public names (headers of sb.in and sb.out
// messages) are part of the contract; the request/reply bodies of the internal
// micro endpoints are JSON documents defined here.
package api

import (
	"encoding/json"
	"time"
)

// Headers of client events (sb.in.<event>) and deliveries (sb.out.*).
const (
	HeaderEvent     = "Sb-Event"     // event name (deliveries and client events)
	HeaderUser      = "Sb-User"      // user id of the sending client
	HeaderDevice    = "Sb-Device"    // device id of the sending client
	HeaderSocket    = "Sb-Socket"    // socket id of the sending client
	HeaderNamespace = "Sb-Namespace" // Socket.IO namespace of the sending client
	HeaderGateway   = "Sb-Gateway"   // gateway instance holding the socket
	// HeaderArgs set to "array" on a delivery says the body is the JSON
	// array of the event's arguments rather than its single argument.
	HeaderArgs = "Sb-Args"
	// HeaderRevision orders the deliveries to one connection that carry it
	// (presence's `connections`, with the revision of the user's key it
	// lists): the gateway delivers one only if its revision is above the
	// last it delivered to that connection, so updates from instances that
	// crossed on the way never leave an older list last.
	HeaderRevision = "Sb-Revision"
	// HeaderClaims carries, on client events, the claims of the client's
	// token that auth is configured to pass on (auth.claims), as one JSON
	// object; absent when there are none.
	HeaderClaims = "Sb-Claims"
)

// ArgsArray is the value of HeaderArgs for multi-argument deliveries.
const ArgsArray = "array"

// Built-in client events handled by Switchboard's own services.
const (
	EventTimerStart        = "timerStart"
	EventTimerStop         = "timerStop"
	EventTimerList         = "timerList"
	EventDisconnectRequest = "disconnectRequest"
	// EventRefreshToken is handled by the gateway itself: the token never
	// goes on sb.in.
	EventRefreshToken = "refreshToken"
)

// Built-in server events.
const (
	EventConnections = "connections"
	EventTick        = "tick"
	EventTimerDone   = "timerDone"
	EventException   = "exception"
	// EventTokenExpiring tells a client, gateway.token_expiring_lead before
	// its token expires, to send refreshToken: {"exp": <unix seconds>}.
	EventTokenExpiring = "tokenExpiring"
)

// Error codes used by every micro endpoint (Nats-Service-Error-Code).
const (
	CodeBadRequest   = 400
	CodeUnauthorized = 401
	CodeForbidden    = 403
	CodeNotFound     = 404
	CodeTimeout      = 408
	CodeConflict     = 409
	CodeTooLarge     = 413
	CodeTooMany      = 429
	CodeInternal     = 500
	CodeUnavailable  = 503
)

// VerifyRequest asks the auth service to verify a token. It travels only on
// the auth service's request subject, never on sb.in/sb.out.
type VerifyRequest struct {
	Token string `json:"token"`
}

// VerifyReply is the identity behind a valid token.
type VerifyReply struct {
	UserID  string    `json:"uid"`
	Name    string    `json:"name,omitempty"`
	Expires time.Time `json:"exp"`
	// Claims are the token's claims on auth's allow-list (auth.claims), as
	// one JSON object; absent when none is listed or present.
	Claims json.RawMessage `json:"claims,omitempty"`
}

// Conn describes one live Socket.IO connection. Its JSON form is the element
// of the client-facing `connections` event, plus the gateway id (not sent to
// clients).
type Conn struct {
	SocketID  string    `json:"socketId"`
	UserID    string    `json:"userId"`
	DeviceID  string    `json:"deviceId"`
	IP        string    `json:"ip"`
	UserAgent string    `json:"userAgent"`
	CreatedAt time.Time `json:"createdAt"`
	Gateway   string    `json:"gateway,omitempty"`
	// Claims are the selected claims of the connection's token
	// (VerifyReply.Claims), sent by the gateway to presence with an admit
	// and in its socket list, for presence.limit_claim. Presence does not
	// store them, and clients never see them.
	Claims json.RawMessage `json:"claims,omitempty"`
}

// Public returns the client-facing view of c (without the gateway id and
// the claims).
func (c Conn) Public() Conn { c.Gateway = ""; c.Claims = nil; return c }

// AdmitRequest asks presence for a connection slot.
type AdmitRequest struct {
	Conn Conn `json:"conn"`
	// Deadline, when set, is when the gateway stops waiting for the
	// answer: presence refuses (408) an admit it takes up later, so a late
	// admit never takes a slot after the gateway gave up and released it.
	Deadline time.Time `json:"deadline,omitzero"`
}

// ResetRequest asks presence to release every socket indexed under a
// gateway: a gateway sends it at start, before it admits any socket, so
// that slots of an earlier process with the same gateway id do not stay.
type ResetRequest struct {
	Gateway string `json:"gateway"`
}

// ResetReply says how many sockets were released.
type ResetReply struct {
	Released int `json:"released"`
}

// AdmitReply confirms a slot.
type AdmitReply struct {
	Connections int `json:"connections"` // the user's live connections, this one included
}

// ReleaseRequest frees a slot. Releasing an unknown socket is not an error.
type ReleaseRequest struct {
	SocketID string `json:"socketId"`
	UserID   string `json:"userId"`
}

// ReleaseReply says whether a slot was actually freed.
type ReleaseReply struct {
	Released bool `json:"released"`
}

// ListRequest asks presence for a user's live connections.
type ListRequest struct {
	UserID string `json:"userId"`
}

// ListReply lists a user's live connections.
type ListReply struct {
	Connections []Conn `json:"connections"`
}

// GatewayStatus is a gateway's answer on its status endpoint and its micro
// stats (nats micro stats switchboard-gateway).
type GatewayStatus struct {
	ID          string `json:"id"`
	Engines     int    `json:"engines"`     // open Engine.IO connections
	Connections int    `json:"connections"` // admitted sockets
}

// Heartbeat is published by every gateway on subject.GatewayHeartbeat.
type Heartbeat struct {
	Gateway string `json:"gateway"`
	// Sockets is the number of sockets the gateway holds.
	Sockets int `json:"sockets"`
	// Digest is the SocketDigest of the ids of those sockets: presence
	// compares it with its index and, when they keep differing, fetches
	// the gateway's list (GatewaySocketsRequest) to heal the difference.
	Digest uint64 `json:"digest"`
}

// AddressReport is a gateway's engine count per client address, for the
// addresses holding at least a reporting floor of engines there.
type AddressReport struct {
	Gateway string         `json:"gateway"`
	Engines map[string]int `json:"engines"`
}

// SocketDigest adds (or, applied again, removes) a socket id to an
// order-independent digest of a set of ids: the XOR of their FNV-1a hashes.
func SocketDigest(d uint64, socketID string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(socketID); i++ {
		h ^= uint64(socketID[i])
		h *= 1099511628211
	}
	return d ^ h
}

// GatewaySocketsRequest asks a gateway for its sockets, in socket id order,
// those after After, at most Limit.
type GatewaySocketsRequest struct {
	After string `json:"after,omitempty"`
	Limit int    `json:"limit"`
}

// GatewaySocketsReply is one page of a gateway's sockets; More says
// whether pages follow.
type GatewaySocketsReply struct {
	Conns []Conn `json:"conns"`
	More  bool   `json:"more"`
}

// DisconnectOrder tells a gateway to end one socket on purpose (the client
// gets a Socket.IO DISCONNECT before the close).
type DisconnectOrder struct {
	SocketID string `json:"socketId"`
	Reason   string `json:"reason"`
}

// LifecycleEvent is published by presence on subject.EventConnected and
// subject.EventDisconnected.
type LifecycleEvent struct {
	Conn Conn `json:"conn"`
}

// Status is the ack/exception body of built-in events.
type Status struct {
	Status  string `json:"status"` // "ok" or "error"
	Message string `json:"message,omitempty"`
}

// ErrorStatus builds the client-facing error body.
func ErrorStatus(msg string) Status { return Status{Status: "error", Message: msg} }

// Lifecycle client events the gateway publishes on sb.in.connect and
// sb.in.disconnect (reserved names: clients cannot send them).
const (
	EventConnect    = "connect"
	EventDisconnect = "disconnect"
)
