package presencesvc

import (
	"errors"
	"strings"

	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// KV keys of the presence bucket:
//
//	u.<uid>                  {"conns":[Conn...]}: the user's live connections
//	g.<gatewayId>.<socketId> uid: index used to purge a dead gateway
//
// Ids are encoded with subject.Encode. The encoded form starts with "~",
// which JetStream KV does not accept in keys, so that mark is stored as "="
// (a character that neither a plain id nor base64url uses). The mapping stays
// one-to-one and reversible.

const (
	userPrefix  = "u."
	indexPrefix = "g."
	allIndexes  = indexPrefix + ">"
	kvMark      = '='
	subjectMark = '~'
)

var errBadKey = errors.New("not a presence key")

// keyToken encodes id into one KV key token.
func keyToken(id string) (string, error) {
	t, err := subject.Encode(id)
	if err != nil {
		return "", err
	}
	if t[0] == subjectMark {
		t = string(kvMark) + t[1:]
	}
	return t, nil
}

// idFromKeyToken reverses keyToken.
func idFromKeyToken(t string) (string, error) {
	if t != "" && t[0] == kvMark {
		t = string(subjectMark) + t[1:]
	}
	return subject.Decode(t)
}

func userKey(uid string) (string, error) {
	t, err := keyToken(uid)
	if err != nil {
		return "", err
	}
	return userPrefix + t, nil
}

func indexKey(gateway, socketID string) (string, error) {
	g, err := keyToken(gateway)
	if err != nil {
		return "", err
	}
	s, err := keyToken(socketID)
	if err != nil {
		return "", err
	}
	return indexPrefix + g + "." + s, nil
}

// indexFilter matches every index key of one gateway.
func indexFilter(gateway string) (string, error) {
	g, err := keyToken(gateway)
	if err != nil {
		return "", err
	}
	return indexPrefix + g + ".>", nil
}

// parseIndexKey returns the gateway and socket ids of an index key.
func parseIndexKey(key string) (gateway, socketID string, err error) {
	rest, ok := strings.CutPrefix(key, indexPrefix)
	if !ok {
		return "", "", errBadKey
	}
	g, s, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(s, ".") {
		return "", "", errBadKey
	}
	if gateway, err = idFromKeyToken(g); err != nil {
		return "", "", err
	}
	if socketID, err = idFromKeyToken(s); err != nil {
		return "", "", err
	}
	return gateway, socketID, nil
}
