package gateway

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// admission bounds the engine connections of one gateway: in total, per
// client address at once, and the rate of handshakes per client address
// (a token bucket). Refusals are answered before an engine exists.
type admission struct {
	maxEngines int
	maxPerIP   int
	rate       rate.Limit
	burst      int
	maxTracked int // client addresses tracked at most

	mu    sync.Mutex
	total int
	perIP map[string]*ipState
	// remote holds the other gateways' reports: engines per address.
	remote map[string]remoteReport
}

// remoteReport is one other gateway's last report.
type remoteReport struct {
	engines map[string]int
	at      time.Time
}

// reportTTL is how long another gateway's report counts.
const reportTTL = 10 * time.Second

type ipState struct {
	engines int
	lim     *rate.Limiter
	seen    time.Time
}

func newAdmission(cfg Config) *admission {
	return &admission{
		maxEngines: cfg.MaxEngines,
		maxPerIP:   cfg.MaxEnginesPerIP,
		rate:       rate.Limit(cfg.HandshakeRate),
		burst:      cfg.HandshakeBurst,
		maxTracked: 2*cfg.MaxEngines + 65536,
		perIP:      map[string]*ipState{},
		remote:     map[string]remoteReport{},
	}
}

// admit takes a place for a new engine from ip, or says why not.
func (a *admission) admit(ip string, now time.Time) *engineError {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.perIP[ip]
	if st == nil {
		if len(a.perIP) >= a.maxTracked {
			return &errBusy
		}
		st = &ipState{lim: rate.NewLimiter(a.rate, a.burst)}
		a.perIP[ip] = st
	}
	st.seen = now
	switch {
	case !st.lim.AllowN(now, 1):
		return &errHandshakeRate
	case a.total >= a.maxEngines:
		return &errBusy
	case st.engines+a.remoteEnginesLocked(ip, now) >= a.maxPerIP:
		return &errTooManyFromIP
	}
	st.engines++
	a.total++
	return nil
}

// release gives back the place of an engine from ip.
func (a *admission) release(ip string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if st := a.perIP[ip]; st != nil && st.engines > 0 {
		st.engines--
		a.total--
	}
}

// sweep forgets addresses without engines not seen since before.
func (a *admission) sweep(before time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for ip, st := range a.perIP {
		if st.engines == 0 && st.seen.Before(before) {
			delete(a.perIP, ip)
		}
	}
}

// proxies are the addresses whose X-Forwarded-For is believed.
type proxies []netip.Prefix

// parseProxies reads addresses and CIDR ranges.
func parseProxies(list []string) (proxies, error) {
	var out proxies
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, err
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

func (ps proxies) trusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientIP is the address of the client: the peer, unless the peer is a
// trusted proxy; then the right-most X-Forwarded-For entry that is not a
// trusted proxy (entries to its left were written by the client or by
// proxies nobody vouches for).
func (ps proxies) clientIP(remoteAddr string, xff []string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	peer = peer.Unmap()
	if !ps.trusted(peer) {
		return peer.String()
	}
	client := peer
	for i := len(xff) - 1; i >= 0; i-- {
		entries := strings.Split(xff[i], ",")
		for j := len(entries) - 1; j >= 0; j-- {
			a, err := netip.ParseAddr(strings.TrimSpace(entries[j]))
			if err != nil {
				return client.String() // garbage: stop at the last good hop
			}
			client = a.Unmap()
			if !ps.trusted(client) {
				return client.String()
			}
		}
	}
	return client.String()
}

// remoteEnginesLocked is the engines of ip on the other gateways, as last
// reported.
func (a *admission) remoteEnginesLocked(ip string, now time.Time) int {
	n := 0
	for gw, r := range a.remote {
		if now.Sub(r.at) > reportTTL {
			delete(a.remote, gw)
			continue
		}
		n += r.engines[ip]
	}
	return n
}

// reportFloor is the number of engines from one address from which a
// gateway reports it to the others: a few per address are always fine.
func (a *admission) reportFloor() int { return max(1, a.maxPerIP/8) }

// report lists the addresses holding at least reportFloor engines here
// (at most maxReported of them, the busiest).
func (a *admission) report() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	floor := a.reportFloor()
	out := map[string]int{}
	for ip, st := range a.perIP {
		if st.engines >= floor {
			out[ip] = st.engines
		}
	}
	if len(out) > maxReported {
		ips := make([]string, 0, len(out))
		for ip := range out {
			ips = append(ips, ip)
		}
		slices.SortFunc(ips, func(x, y string) int { return out[y] - out[x] })
		for _, ip := range ips[maxReported:] {
			delete(out, ip)
		}
	}
	return out
}

// maxReported bounds the addresses of one report.
const maxReported = 2000

// learn records another gateway's report.
func (a *admission) learn(gw string, engines map[string]int, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(engines) > maxReported {
		return // not from a gateway of ours
	}
	a.remote[gw] = remoteReport{engines: engines, at: now}
}
