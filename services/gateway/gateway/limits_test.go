package gateway

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
)

func TestAdmission(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxEngines, cfg.MaxEnginesPerIP, cfg.HandshakeRate, cfg.HandshakeBurst = 5, 2, 1, 4
	a := newAdmission(cfg)
	now := time.Now()
	must := func(ip string, want *engineError) {
		t.Helper()
		if got := a.admit(ip, now); got != want {
			t.Fatalf("admit %s = %v, want %v", ip, got, want)
		}
	}
	must("1.1.1.1", nil)
	must("1.1.1.1", nil)
	must("1.1.1.1", &errTooManyFromIP) // at the per-address bound
	a.release("1.1.1.1")
	must("1.1.1.1", nil)
	must("1.1.1.1", &errHandshakeRate) // burst of 4 used up
	now = now.Add(time.Second)         // one more token
	a.release("1.1.1.1")
	must("1.1.1.1", nil)
	for _, ip := range []string{"2.2.2.2", "2.2.2.2", "3.3.3.3"} {
		must(ip, nil)
	}
	must("4.4.4.4", &errBusy) // the gateway's bound
	if a.engines() != 5 {
		t.Fatalf("engines = %d", a.engines())
	}
	for range 10 { // releasing more than was admitted changes nothing
		a.release("3.3.3.3")
	}
	if a.engines() != 4 {
		t.Fatalf("engines = %d after releases", a.engines())
	}
	a.sweep(now.Add(time.Hour))
	if _, ok := a.perIP["3.3.3.3"]; ok {
		t.Fatal("an address without engines was not forgotten")
	}
	if _, ok := a.perIP["1.1.1.1"]; !ok {
		t.Fatal("an address with engines was forgotten")
	}
}

func TestClientIP(t *testing.T) {
	ps, err := parseProxies([]string{"10.0.0.0/8", "192.168.1.1", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, remote string
		xff          []string
		want         string
	}{
		{"direct client, header ignored", "203.0.113.9:5000", []string{"1.2.3.4"}, "203.0.113.9"},
		{"via proxy", "10.1.2.3:5000", []string{"198.51.100.7"}, "198.51.100.7"},
		{"client-written entry on the left is not believed", "10.1.2.3:5000", []string{"6.6.6.6, 198.51.100.7"}, "198.51.100.7"},
		{"chain of trusted proxies", "10.1.2.3:5000", []string{"198.51.100.7, 10.9.9.9", "192.168.1.1"}, "198.51.100.7"},
		{"garbage stops at the last good hop", "10.1.2.3:5000", []string{"nonsense, 10.9.9.9"}, "10.9.9.9"},
		{"no header", "10.1.2.3:5000", nil, "10.1.2.3"},
		{"ipv6 proxy, v4-mapped client", "[::1]:5000", []string{"::ffff:198.51.100.7"}, "198.51.100.7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ps.clientIP(tt.remote, tt.xff); got != tt.want {
				t.Fatalf("clientIP = %s, want %s", got, tt.want)
			}
		})
	}
	for _, bad := range []string{"10.0.0.0/33", "host.example", ""} {
		if _, err := parseProxies([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	cfg := DefaultConfig()
	cfg.TrustProxy = true
	if err := cfg.validate(); err == nil || !strings.Contains(err.Error(), "trusted_proxies") {
		t.Fatalf("trust_proxy accepted: %v", err)
	}
}

// Handshakes over a client address's bounds get HTTP 429, over the
// gateway's 503, with a JSON reason; closing an engine frees its place.
func TestHandshakeLimits(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) {
		c.MaxEnginesPerIP, c.HandshakeRate, c.HandshakeBurst = 2, 1000, 1000
	})
	a := st.dial("", nil)
	st.dial("", nil)
	_, resp, err := websocket.DefaultDialer.Dial(st.url(""), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third websocket from one address: %v %v", resp, err)
	}
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "Too many connections from this address") {
		t.Fatalf("body %q", body)
	}
	if r, err := http.Get("http://" + st.gw.Addr().String() + "/socket.io/?EIO=4&transport=polling"); err != nil || r.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("polling handshake over the bound: %v %v", r, err)
	}
	_ = a.c.Close()
	eventually(t, 3*time.Second, func() bool { return st.gw.adm.engines() == 1 }, "place freed")
	st.dial("", nil)
}

func TestHandshakeRate(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) {
		c.HandshakeRate, c.HandshakeBurst = 1, 3
	})
	for range 3 {
		w := st.dial("", nil)
		_ = w.c.Close()
	}
	_, resp, err := websocket.DefaultDialer.Dial(st.url(""), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("fourth handshake in a burst of 3: %v %v", resp, err)
	}
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "Too many handshakes") {
		t.Fatalf("body %q", body)
	}
}

// Oversized headers get 431; a POST body that trickles is cut off after
// body_timeout.
func TestHTTPBounds(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) {
		c.MaxHeaderBytes, c.BodyTimeout = 8192, 500*time.Millisecond
	})
	req, _ := http.NewRequest(http.MethodGet, "http://"+st.gw.Addr().String()+"/socket.io/?EIO=4&transport=polling", nil)
	req.Header.Set("X-Big", strings.Repeat("h", 20000))
	if r, err := http.DefaultClient.Do(req); err != nil || r.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("big headers: %v %v", r, err)
	}
	p := st.poller()
	c, err := net.Dial("tcp", st.gw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /socket.io/?EIO=4&transport=polling&sid=%s HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n40", p.sid)
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a trickling POST: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second || resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Fatalf("trickling POST answered %d after %s, close %v", resp.StatusCode, d, resp.Close)
	}
}

// The per-address cap holds across gateways: each reports its busiest
// addresses every heartbeat, and the others count those engines too.
func TestPerAddressCapAcrossGateways(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) {
		c.MaxEnginesPerIP, c.HandshakeRate, c.HandshakeBurst = 4, 1000, 1000
	})
	gw2 := st.secondGateway(func(c *Config) {
		c.MaxEnginesPerIP, c.HandshakeRate, c.HandshakeBurst = 4, 1000, 1000
		c.HeartbeatInterval = 100 * time.Millisecond
	})
	via := *st
	via.gw = gw2
	for range 3 {
		via.dial("", nil)
	}
	// The first gateway hears of them, then admits one more at most.
	eventually(t, 3*time.Second, func() bool {
		st.gw.adm.mu.Lock()
		defer st.gw.adm.mu.Unlock()
		return st.gw.adm.remoteEnginesLocked("127.0.0.1", time.Now()) == 3
	}, "the other gateway's report")
	st.dial("", nil)
	_, resp, err := websocket.DefaultDialer.Dial(st.url(""), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("fifth engine from one address over two gateways: %v %v", resp, err)
	}
}

func TestAddressReportFloorAndBound(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxEngines, cfg.MaxEnginesPerIP, cfg.HandshakeRate, cfg.HandshakeBurst = 1<<20, 16, 1e9, 1<<30
	a := newAdmission(cfg)
	now := time.Now()
	for range 2 {
		a.admit("few", now) // under the floor (16/8)
	}
	for i := range maxReported + 10 {
		for range 3 {
			a.admit(fmt.Sprintf("10.0.%d.%d", i/256, i%256), now)
		}
	}
	r := a.report()
	if len(r) != maxReported || r["few"] != 0 {
		t.Fatalf("report of %d addresses, few=%d", len(r), r["few"])
	}
	a.learn("other", map[string]int{"x": 5}, now.Add(-2*reportTTL))
	a.mu.Lock()
	defer a.mu.Unlock()
	if n := a.remoteEnginesLocked("x", now); n != 0 {
		t.Fatalf("a stale report counted: %d", n)
	}
}
