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
// Ids are encoded with subject.KeyToken (subject.Encode with the "~" mark
// written as "=", since KV keys cannot hold "~").

const (
	userPrefix  = "u."
	indexPrefix = "g."
	allIndexes  = indexPrefix + ">"
)

var errBadKey = errors.New("not a presence key")

// keyToken encodes id into one KV key token.
func keyToken(id string) (string, error) { return subject.KeyToken(id) }

// idFromKeyToken reverses keyToken.
func idFromKeyToken(t string) (string, error) { return subject.IDFromKeyToken(t) }

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
