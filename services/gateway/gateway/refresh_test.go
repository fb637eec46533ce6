package gateway

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/services/auth/authsvc"
	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
)

func mint(t testing.TB, uid string, ttl time.Duration, extra map[string]any) string {
	t.Helper()
	tok, err := authsvc.MintTokenWith(testSecret, "", "", uid, ttl, extra)
	must(t, err)
	return tok
}

// connectWith connects w with token and fails the test unless accepted.
func connectWith(t *testing.T, w *wsClient, token string) {
	t.Helper()
	if got := w.connect(fmt.Sprintf(`{"token":%q}`, token)); !strings.HasPrefix(got, `40{"sid"`) {
		t.Fatalf("connect: %q", got)
	}
}

// A socket gets tokenExpiring token_expiring_lead before its token
// expires; a refreshToken with a new token of the same user is acked with
// the new expiry, and with expire_sockets the socket lives past the first
// token's expiry and grace.
func TestTokenRefreshKeepsTheSocket(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) {
		c.ExpireSockets = true
		c.TokenExpiringLead = time.Second
		c.ExpireGrace = 500 * time.Millisecond
	})
	first := mint(t, "rita", 2500*time.Millisecond, nil)
	w := st.dial("", nil)
	connectWith(t, w, first)
	got := w.expect(`42["tokenExpiring"`)
	var ev []json.RawMessage
	must(t, json.Unmarshal([]byte(got[2:]), &ev))
	var body struct{ Exp int64 }
	must(t, json.Unmarshal(ev[1], &body))
	exp := time.Unix(body.Exp, 0)
	if lead := time.Until(exp); lead > 1100*time.Millisecond || lead < 0 {
		t.Fatalf("tokenExpiring %v before the expiry, want about 1s", lead)
	}

	second := mint(t, "rita", time.Hour, nil)
	w.send(fmt.Sprintf(`421["refreshToken",{"token":%q}]`, second))
	ack := w.expect("431")
	var args []struct {
		Status string `json:"status"`
		Exp    int64  `json:"exp"`
	}
	must(t, json.Unmarshal([]byte(ack[3:]), &args))
	if len(args) != 1 || args[0].Status != "ok" || time.Until(time.Unix(args[0].Exp, 0)) < 59*time.Minute {
		t.Fatalf("refresh ack %q", ack)
	}
	// Past the first token's expiry and grace, the socket is still there.
	time.Sleep(time.Until(exp.Add(time.Second)))
	if s, err := w.tryRead(300 * time.Millisecond); err == nil && !isUpdate(s) {
		t.Fatalf("got %q after the refresh, want nothing", s)
	}
	if n := len(st.presenceList("rita")); n != 1 {
		t.Fatalf("presence lists %d sockets of rita, want 1", n)
	}
}

// Without a refresh, expire_sockets ends the socket expire_grace after the
// token's expiry, not before.
func TestExpiryWaitsForTheGrace(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) {
		c.ExpireSockets = true
		c.ExpireGrace = 1500 * time.Millisecond
	})
	tok := mint(t, "zed", 1500*time.Millisecond, nil)
	exp := time.Unix(time.Now().Add(1500*time.Millisecond).Unix(), 0)
	w := st.dial("", nil)
	connectWith(t, w, tok)
	w.expect(`42["tokenExpiring"`) // lead 60s: right away
	if got := w.expect("41"); got != "41" {
		t.Fatalf("got %q, want 41", got)
	}
	if early := time.Until(exp.Add(1500 * time.Millisecond)); early > 50*time.Millisecond {
		t.Fatalf("ended %v before the expiry and grace", early)
	}
	w.expectClosed(2 * time.Second)
	eventually(t, 3*time.Second, func() bool { return len(st.presenceList("zed")) == 0 }, "slot released")
}

// A refresh with a bad token, another user's token or no token is refused
// (ack or exception), and the socket keeps its user.
func TestRefreshRefusals(t *testing.T) {
	st := newStack(t)
	w, sid := st.mustConnect("una", "")
	events := make(chan *nats.Msg, 16)
	sub, err := st.nc.ChanSubscribe("sb.in.whoami", events)
	must(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	must(t, st.nc.Flush())

	for i, tc := range []struct{ send, want string }{
		{fmt.Sprintf(`421["refreshToken",{"token":%q}]`, st.token("vic")), `431[{"status":"error","message":"Token belongs to another user"}]`},
		{`422["refreshToken",{"token":"not-a-jwt"}]`, `432[{"status":"error","message":"Unauthorized"}]`},
		{`423["refreshToken",{}]`, `433[{"status":"error","message":"Token not provided"}]`},
		{`424["refreshToken","bare"]`, `434[{"status":"error","message":"Token not provided"}]`},
		{`425["refreshToken"]`, `435[{"status":"error","message":"Token not provided"}]`},
		{fmt.Sprintf(`426["refreshToken",{"token":%q}]`, mint(t, "una", -time.Minute, nil)), `436[{"status":"error","message":"Unauthorized"}]`},
		{fmt.Sprintf(`427["refreshToken",{"token":%q}]`, mint(t, "una", time.Minute, nil)), `437[{"status":"error","message":"Token expires before the current one"}]`},
		{`42["refreshToken",{"token":"not-a-jwt"}]`, `42["exception",{"status":"error","message":"Unauthorized"}]`},
	} {
		w.send(tc.send)
		if got := w.expect(tc.want[:3]); got != tc.want {
			t.Fatalf("case %d: got %q, want %q", i, got, tc.want)
		}
	}
	w.send(`42["whoami"]`)
	select {
	case m := <-events:
		if m.Header.Get("Sb-User") != "una" || m.Header.Get("Sb-Socket") != sid {
			t.Fatalf("event headers %v, want una's socket", m.Header)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no event")
	}
}

// The claims auth passes on travel with client events (Sb-Claims), and a
// refresh replaces them; tokens never go on sb.in.
func TestClaimsTravelWithEvents(t *testing.T) {
	st := newStackAuth(t, natstest.Run(t), func(c *authsvc.Config) {
		c.Claims = []string{"role", "tenant"}
	})
	all := make(chan *nats.Msg, 16)
	sub, err := st.nc.ChanSubscribe("sb.in.>", all)
	must(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	must(t, st.nc.Flush())
	refreshes := tap(t, st.nc, "sb.in.refreshToken")
	next := func(event string) *nats.Msg {
		t.Helper()
		for {
			select {
			case m := <-all:
				if m.Header.Get("Sb-Event") == event {
					return m
				}
			case <-time.After(3 * time.Second):
				t.Fatalf("no %s event", event)
			}
		}
	}

	first := mint(t, "cleo", time.Hour, map[string]any{"role": "admin", "tenant": "t1", "secret": "x"})
	w := st.dial("", nil)
	connectWith(t, w, first)
	if got := next("connect").Header.Get("Sb-Claims"); got != `{"role":"admin","tenant":"t1"}` {
		t.Fatalf("connect claims %q", got)
	}
	w.send(`42["ping",1]`)
	if got := next("ping").Header.Get("Sb-Claims"); got != `{"role":"admin","tenant":"t1"}` {
		t.Fatalf("ping claims %q", got)
	}
	second := mint(t, "cleo", 2*time.Hour, map[string]any{"role": "owner"})
	w.send(fmt.Sprintf(`421["refreshToken",{"token":%q}]`, second))
	w.expect(`431[{"status":"ok"`)
	w.send(`42["ping",2]`)
	m := next("ping")
	if got := m.Header.Get("Sb-Claims"); got != `{"role":"owner"}` {
		t.Fatalf("claims after the refresh %q", got)
	}

	// Without claims in the token there is no header.
	w2 := st.dial("", nil)
	connectWith(t, w2, st.token("dora"))
	w2.send(`42["ping",3]`)
	if m := next("ping"); m.Header.Get("Sb-Claims") != "" || m.Header.Get("Sb-User") != "dora" {
		t.Fatalf("headers %v", m.Header)
	}
	if got := refreshes(); got != "" {
		t.Fatalf("refreshToken went on the bus: %s", got)
	}
}

func TestExpiringAt(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	for _, tc := range []struct {
		life, lead, want time.Duration // want: from now
	}{
		{time.Hour, time.Minute, 59 * time.Minute},
		{2 * time.Minute, time.Minute, time.Minute},
		{time.Minute, time.Minute, 30 * time.Second},
		{10 * time.Second, time.Minute, 5 * time.Second},
		{0, time.Minute, 0},
		{-time.Second, time.Minute, -time.Second / 2},
	} {
		if got := expiringAt(now, now.Add(tc.life), tc.lead).Sub(now); got != tc.want {
			t.Errorf("life %v, lead %v: tokenExpiring after %v, want %v", tc.life, tc.lead, got, tc.want)
		}
	}
}

// Refreshes count against the engine's bound of CONNECTs per minute; past
// it they are refused without asking auth, and the socket stays.
func TestRefreshAttemptsBounded(t *testing.T) {
	st := newStack(t)
	w, _ := st.mustConnect("rex", "") // one CONNECT counted
	tok := mint(t, "rex", 2*time.Hour, nil)
	const n = maxConnectsPerMinute + 5
	for i := 1; i <= n; i++ {
		w.send(fmt.Sprintf(`42%d["refreshToken",{"token":%q}]`, i, tok))
	}
	ok, tooMany := 0, 0
	for range n {
		got := w.expect("43")
		switch {
		case strings.Contains(got, `"status":"ok"`):
			ok++
		case strings.Contains(got, msgTooManyRefreshes):
			tooMany++
		default:
			t.Fatalf("ack %q", got)
		}
	}
	if ok != maxConnectsPerMinute-1 || tooMany != n-ok {
		t.Fatalf("%d refreshed, %d refused; want %d and %d", ok, tooMany, maxConnectsPerMinute-1, n-maxConnectsPerMinute+1)
	}
	if n := len(st.presenceList("rex")); n != 1 {
		t.Fatalf("presence lists %d sockets of rex, want the one still open", n)
	}
}

// With expire_sockets off (the default) nothing ends a socket whose token
// expired: it gets tokenExpiring, and stays.
func TestExpiredTokenKeepsTheSocketByDefault(t *testing.T) {
	st := newStack(t)
	tok := mint(t, "otto", 1500*time.Millisecond, nil)
	exp := time.Unix(time.Now().Add(1500*time.Millisecond).Unix(), 0)
	w := st.dial("", nil)
	connectWith(t, w, tok)
	w.expect(`42["tokenExpiring"`)
	for time.Now().Before(exp.Add(time.Second)) {
		if s, err := w.tryRead(200 * time.Millisecond); err == nil && !isUpdate(s) && s != "2" {
			t.Fatalf("got %q past the expiry, want nothing", s)
		}
	}
	if n := len(st.presenceList("otto")); n != 1 {
		t.Fatalf("presence lists %d sockets of otto, want 1", n)
	}
}

// Client requests in flight (events with an ack and refreshes) are bounded
// by max_pending_acks per socket; past it they are refused at once, and a
// slot frees when a request ends.
func TestPendingRequestsBounded(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) {
		c.MaxPendingAcks = 2
		c.RequestTimeout = 700 * time.Millisecond
	})
	sub, err := st.nc.Subscribe("sb.in.slow", func(*nats.Msg) {}) // never answers
	must(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	must(t, st.nc.Flush())
	w, _ := st.mustConnect("pam", "")
	w.send(`421["slow"]`)
	w.send(`422["slow"]`)
	w.send(`423["slow"]`)
	if got := w.expect("433"); got != `433[{"status":"error","message":"Too many pending requests"}]` {
		t.Fatalf("third request: %q", got)
	}
	w.send(fmt.Sprintf(`424["refreshToken",{"token":%q}]`, mint(t, "pam", 2*time.Hour, nil)))
	if got := w.expect("434"); got != `434[{"status":"error","message":"Too many pending requests"}]` {
		t.Fatalf("refresh past the bound: %q", got)
	}
	// The first two time out, which frees their slots.
	timedOut := map[string]bool{}
	for range 2 {
		timedOut[w.expect("43")] = true
	}
	for _, id := range []string{"431", "432"} {
		if !timedOut[id+`[{"status":"error","message":"Service unavailable"}]`] {
			t.Fatalf("request %s did not time out: %v", id, timedOut)
		}
	}
	w.send(fmt.Sprintf(`425["refreshToken",{"token":%q}]`, mint(t, "pam", 2*time.Hour, nil)))
	if got := w.expect("435"); !strings.HasPrefix(got, `435[{"status":"ok"`) {
		t.Fatalf("refresh after the slots freed: %q", got)
	}
}
