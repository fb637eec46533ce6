package authsvc

import (
	"context"
	"encoding/json"
	"errors"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/switchboard-rt/switchboard/pkg/api"
)

// Verifier turns a token into the identity it proves. Errors that are the
// token's fault are *RejectError; any other error is an internal fault.
type Verifier interface {
	Verify(ctx context.Context, token string) (api.VerifyReply, error)
}

var (
	_ Verifier = (*jwtVerifier)(nil)
	_ Verifier = (*firebaseVerifier)(nil)
	_ Verifier = (*oidcVerifier)(nil)
)

// MaxTokenLen bounds the tokens looked at; longer ones are refused unparsed.
const MaxTokenLen = 16 << 10

// MaxUIDLen bounds the user id a token may carry (bytes).
const MaxUIDLen = 128

// RejectError says why a token was refused. Reason is one of a fixed set of
// words and never holds any part of the token, so it is safe to log.
type RejectError struct {
	Reason string
}

func (e *RejectError) Error() string { return "token rejected: " + e.Reason }

func reject(reason string) error { return &RejectError{Reason: reason} }

// IsRejected reports whether err means the token is not acceptable.
func IsRejected(err error) bool {
	var r *RejectError
	return errors.As(err, &r)
}

// precheck refuses tokens that no verifier needs to look at.
func precheck(token string) error {
	switch {
	case token == "":
		return reject("empty")
	case len(token) > MaxTokenLen:
		return reject("too long")
	}
	return nil
}

// identity builds the reply after checking the user id, which later becomes
// part of subjects, KV keys and client-visible events.
func identity(uid, name string, exp time.Time, claims json.RawMessage) (api.VerifyReply, error) {
	if err := checkUID(uid); err != nil {
		return api.VerifyReply{}, err
	}
	return api.VerifyReply{UserID: uid, Name: name, Expires: exp.UTC(), Claims: claims}, nil
}

// claimPicker selects the allow-listed claims of a verified token, which
// travel with the client's events so that services need not verify the
// token again.
type claimPicker struct {
	names []string
	max   int // bytes of the JSON object
}

// pick returns the allow-listed claims present in all as one JSON object
// (nil when none is present). A token whose selection is larger than max
// is refused: its claims could not travel with its events.
func (p claimPicker) pick(all map[string]any) (json.RawMessage, error) {
	if len(p.names) == 0 {
		return nil, nil
	}
	sel := make(map[string]any, len(p.names))
	for _, n := range p.names {
		if v, ok := all[n]; ok {
			sel[n] = v
		}
	}
	if len(sel) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(sel)
	if err != nil {
		return nil, reject("claims not JSON")
	}
	if len(b) > p.max {
		return nil, reject("claims too large")
	}
	return b, nil
}

func checkUID(uid string) error {
	switch {
	case uid == "":
		return reject("missing subject")
	case len(uid) > MaxUIDLen:
		return reject("subject too long")
	case !utf8.ValidString(uid):
		return reject("subject not utf-8")
	}
	for _, r := range uid {
		if unicode.IsControl(r) {
			return reject("subject has control characters")
		}
	}
	return nil
}
