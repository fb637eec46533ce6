package gateway

import (
	"encoding/json"
	"strings"
)

// CONNECT_ERROR messages of CONTRACT §2.1 (exact: clients match on them).
const (
	msgNoToken          = "Token not provided"
	msgBadScheme        = "Invalid authentication method. Only Bearer is supported."
	msgUnauthorized     = "Unauthorized"
	msgTooMany          = "Too many connections"
	msgUnavailable      = "Service unavailable"
	msgInvalidNamespace = "Invalid namespace"
	msgInvalidDevice    = "Invalid deviceId"
	// Not in the contract's table: sent before closing an engine that
	// sent more than maxConnectsPerMinute CONNECTs.
	msgTooManyAttempts = "Too many connection attempts"
)

const maxDeviceIDLen = 128

// credentials are the handshake inputs a CONNECT is judged on.
type credentials struct {
	authToken  json.RawMessage // CONNECT auth payload field "token" (nil when absent)
	header     string          // Authorization header of the HTTP handshake
	query      string          // handshake query parameter "token"
	allowQuery bool
}

// token finds the token (CONTRACT §2.1) or returns the CONNECT_ERROR message.
func (c credentials) token() (string, string) {
	raw := ""
	if len(c.authToken) > 0 && string(c.authToken) != "null" {
		var s string
		if c.authToken[0] != '"' || json.Unmarshal(c.authToken, &s) != nil {
			return "", msgUnauthorized
		}
		raw = strings.TrimSpace(s)
	}
	if raw == "" {
		raw = strings.TrimSpace(c.header)
	}
	if raw == "" && c.allowQuery {
		raw = strings.TrimSpace(c.query)
	}
	if raw == "" || raw == "Bearer" {
		return "", msgNoToken
	}
	if i := strings.IndexAny(raw, " \t"); i >= 0 {
		if raw[:i] != "Bearer" {
			return "", msgBadScheme
		}
		raw = strings.TrimSpace(raw[i+1:])
		if raw == "" {
			return "", msgNoToken
		}
		if strings.ContainsAny(raw, " \t") {
			return "", msgUnauthorized
		}
	}
	return raw, ""
}

// validDeviceID reports whether id is 1–128 characters of [A-Za-z0-9._:-].
func validDeviceID(id string) bool {
	if len(id) == 0 || len(id) > maxDeviceIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

// deviceID picks the device id: query first, then the auth payload, else the
// socket id. ok is false when a given id is invalid.
func deviceID(query []string, auth json.RawMessage, socketID string) (string, bool) {
	if len(query) > 0 {
		return query[0], validDeviceID(query[0])
	}
	if len(auth) > 0 && string(auth) != "null" {
		var s string
		if auth[0] != '"' || json.Unmarshal(auth, &s) != nil {
			return "", false
		}
		return s, validDeviceID(s)
	}
	return socketID, true
}
