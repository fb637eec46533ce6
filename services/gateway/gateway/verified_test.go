package gateway

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
)

// tap records everything published on subj (the test's own, unrestricted
// NATS user sees what any gateway does).
func tap(t *testing.T, nc *nats.Conn, subj string) func() string {
	t.Helper()
	var mu sync.Mutex
	var all strings.Builder
	sub, err := nc.Subscribe(subj, func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(&all, "%v %s\n", m.Header, m.Data)
	})
	must(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	must(t, nc.Flush())
	return func() string {
		_ = nc.Flush()
		mu.Lock()
		defer mu.Unlock()
		return all.String()
	}
}

// A CONNECT forwarded to the gateway holding the session (a polling POST)
// or relayed to it (a WebSocket frame) crosses the bus without its token:
// the forwarding gateway verifies it and sends the outcome.
func TestTokensNotForwardedOnTheBus(t *testing.T) {
	st := newStack(t)
	gw2 := st.secondGateway()
	seen := tap(t, st.nc, "sb.engine.>")
	seenRelay := tap(t, st.nc, "sb.relay.>")

	// Polling held by the first gateway, the CONNECT POSTed to the second.
	tok := st.token("fwd")
	p := st.poller("http://"+st.gw.Addr().String(), "http://"+gw2.Addr().String())
	p.post(`40{"token":"` + tok + `","deviceId":"phone"}`)
	if got := p.getSkipping(); len(got) == 0 || !strings.HasPrefix(got[0], `40{"sid":`) {
		t.Fatalf("forwarded CONNECT answered %q", got)
	}
	// A bad token is refused through the forward as well.
	p2 := st.poller("http://"+st.gw.Addr().String(), "http://"+gw2.Addr().String())
	p2.post(`40{"token":"not-a-jwt"}`)
	if got := p2.getSkipping(); len(got) == 0 || got[0] != `44{"message":"Unauthorized"}` {
		t.Fatalf("forwarded bad CONNECT answered %q", got)
	}

	// The whole handshake over a WebSocket relayed by the second gateway.
	p3 := st.poller()
	c := probeWS(t, gw2.Addr().String(), p3.sid)
	must(t, c.WriteMessage(websocket.TextMessage, []byte("5")))
	time.Sleep(100 * time.Millisecond)
	must(t, c.WriteMessage(websocket.TextMessage, []byte(`40{"token":"`+tok+`"}`)))
	for {
		_, b, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("relayed CONNECT: %v", err)
		}
		if strings.HasPrefix(string(b), "40") {
			if !strings.HasPrefix(string(b), `40{"sid":`) {
				t.Fatalf("relayed CONNECT answered %q", b)
			}
			break
		}
	}
	// A refreshToken takes the same way: relayed, then forwarded.
	tok2 := mint(t, "fwd", 2*time.Hour, nil)
	must(t, c.WriteMessage(websocket.TextMessage, []byte(`421["refreshToken",{"token":"`+tok2+`"}]`)))
	for {
		_, b, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("relayed refreshToken: %v", err)
		}
		if strings.HasPrefix(string(b), "431") {
			if !strings.HasPrefix(string(b), `431[{"status":"ok"`) {
				t.Fatalf("relayed refreshToken answered %q", b)
			}
			break
		}
	}
	tok3 := mint(t, "fwd", 3*time.Hour, nil)
	p.post(`422["refreshToken",{"token":"` + tok3 + `"}]`)
	if got := p.getSkipping(); len(got) == 0 || !strings.HasPrefix(got[0], `432[{"status":"ok"`) {
		t.Fatalf("forwarded refreshToken answered %q", got)
	}
	bus := seen() + seenRelay()
	for _, tk := range []string{tok, tok2, tok3} {
		if strings.Contains(bus, tk) {
			t.Fatalf("a token crossed the bus:\n%s", bus)
		}
	}
	if strings.Count(bus, verifiedPrefix) < 4 {
		t.Fatalf("want at least 4 verdicts on the bus:\n%s", bus)
	}
}

// A client cannot claim a verdict itself: "sb-verified:0" sent straight to
// a gateway is a token like any other, and refused.
func TestClientCannotClaimAVerdict(t *testing.T) {
	st := newStack(t)
	w := st.dial("", nil)
	if got := w.connect(`{"token":"sb-verified:0"}`); got != `44{"message":"Unauthorized"}` {
		t.Fatalf("got %q", got)
	}
	p := st.poller()
	p.post(`40{"token":"sb-verified:0"}`)
	if got := p.getSkipping(); len(got) == 0 || got[0] != `44{"message":"Unauthorized"}` {
		t.Fatalf("polling got %q", got)
	}
}
