package authsvc

import (
	"sync"
	"time"
)

// revocationCache remembers, per user, what Firebase answered about the
// user's tokens, so that a user is looked up at most once per ttl while
// tokens keep coming (several devices, reconnects). A revocation or a
// disabled account thus takes effect within ttl. It holds at most max users;
// past that, an arbitrary one makes room.
type revocationCache struct {
	ttl time.Duration
	max int

	mu sync.Mutex
	m  map[string]cachedRevocation
}

// revocationEntry is what one lookup proved.
type revocationEntry struct {
	okAt        int64 // a token issued then (unix s) passed: later ones pass too
	refusedUpTo int64 // a token issued then was revoked: earlier ones are too
	disabled    bool  // the user is disabled: every token is refused
}

type cachedRevocation struct {
	revocationEntry
	until time.Time
}

type revocationVerdict uint8

const (
	revocationUnknown revocationVerdict = iota // ask Firebase
	revocationOK
	revocationRefused
)

func newRevocationCache(max int, ttl time.Duration) *revocationCache {
	return &revocationCache{ttl: ttl, max: max, m: make(map[string]cachedRevocation)}
}

// get judges a token of uid issued at iat (unix s) from what is known at now.
func (c *revocationCache) get(uid string, iat int64, now time.Time) revocationVerdict {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[uid]
	switch {
	case !ok:
		return revocationUnknown
	case !now.Before(e.until):
		delete(c.m, uid)
		return revocationUnknown
	case e.disabled:
		return revocationRefused
	case e.refusedUpTo != 0 && iat <= e.refusedUpTo:
		return revocationRefused
	case e.okAt != 0 && iat >= e.okAt:
		return revocationOK
	}
	return revocationUnknown
}

// put remembers what a lookup at now proved about uid.
func (c *revocationCache) put(uid string, e revocationEntry, now time.Time) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[uid]; !ok && len(c.m) >= c.max {
		for old := range c.m {
			delete(c.m, old)
			break
		}
	}
	c.m[uid] = cachedRevocation{revocationEntry: e, until: now.Add(c.ttl)}
}
