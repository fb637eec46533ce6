package gateway

import (
	"net/http"
	"net/url"
	"strings"
)

// originChecker decides whether a browser origin may connect. Requests
// without an Origin header (native apps, servers) pass; browser origins pass
// when same-origin or listed. A listed origin may end in ":*" to allow any
// port (http://localhost:*).
type originChecker struct {
	any   bool
	exact map[string]bool
	ports []string // "scheme://host:" prefixes
}

func newOriginChecker(allowed []string) *originChecker {
	c := &originChecker{exact: map[string]bool{}}
	for _, o := range allowed {
		o = strings.TrimRight(strings.ToLower(strings.TrimSpace(o)), "/")
		switch {
		case o == "*":
			c.any = true
		case strings.HasSuffix(o, ":*"):
			c.ports = append(c.ports, strings.TrimSuffix(o, "*"))
		default:
			c.exact[o] = true
		}
	}
	return c
}

func (c *originChecker) allow(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if c.any {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	norm := strings.ToLower(u.Scheme + "://" + u.Host)
	if c.exact[norm] {
		return true
	}
	for _, p := range c.ports {
		if strings.HasPrefix(norm, p) && u.Port() != "" && !strings.Contains(norm[len(p):], ":") {
			return true
		}
	}
	return false
}
