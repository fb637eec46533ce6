package gateway

import (
	"crypto/sha256"
	"sync"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/api"
)

// authCache remembers the identities auth verified, by a SHA-256 hash of
// the token (never the token), for auth_cache_ttl and never past the
// token's expiry, so that a client reconnecting with the same token (a
// network change, a reconnect storm after a deploy) is admitted without
// asking auth again. Refusals are not remembered. It holds at most max
// entries; past that, an arbitrary one makes room.
type authCache struct {
	ttl time.Duration
	max int

	mu sync.Mutex
	m  map[tokenHash]cachedID
}

// tokenHash is what the cache knows of a token.
type tokenHash [sha256.Size]byte

func hashToken(token string) tokenHash { return sha256.Sum256([]byte(token)) }

type cachedID struct {
	id    api.VerifyReply
	until time.Time
}

// newAuthCache returns a cache, or nil (caching nothing) when max or ttl
// is not positive.
func newAuthCache(max int, ttl time.Duration) *authCache {
	if max <= 0 || ttl <= 0 {
		return nil
	}
	return &authCache{ttl: ttl, max: max, m: make(map[tokenHash]cachedID)}
}

// get returns the identity verified for the token of hash k, if still
// valid at now.
func (c *authCache) get(k tokenHash, now time.Time) (api.VerifyReply, bool) {
	if c == nil {
		return api.VerifyReply{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok {
		return api.VerifyReply{}, false
	}
	if !now.Before(e.until) {
		delete(c.m, k)
		return api.VerifyReply{}, false
	}
	return e.id, true
}

// put remembers id, verified at now for the token of hash k.
func (c *authCache) put(k tokenHash, id api.VerifyReply, now time.Time) {
	if c == nil {
		return
	}
	until := now.Add(c.ttl)
	if !id.Expires.IsZero() && id.Expires.Before(until) {
		until = id.Expires
	}
	if !now.Before(until) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		for old := range c.m {
			delete(c.m, old)
			break
		}
	}
	c.m[k] = cachedID{id: id, until: until}
}

// len is the number of entries.
func (c *authCache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
