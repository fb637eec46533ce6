package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/client"
	"github.com/switchboard-rt/switchboard/pkg/socketio"
	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
)

// poller is a raw Engine.IO long-polling client; bases lists the gateways
// its requests go to, in turn.
type poller struct {
	t     testing.TB
	bases []string
	n     atomic.Int64
	sid   string
	hc    *http.Client
}

func (st *stack) poller(bases ...string) *poller {
	if len(bases) == 0 {
		bases = []string{"http://" + st.gw.Addr().String()}
	}
	p := &poller{t: st.t, bases: bases, hc: &http.Client{Timeout: 30 * time.Second}}
	status, body := p.do(http.MethodGet, "", nil)
	if status != 200 || !strings.HasPrefix(body, "0{") {
		st.t.Fatalf("handshake: %d %q", status, body)
	}
	var open struct {
		SID      string   `json:"sid"`
		Upgrades []string `json:"upgrades"`
	}
	if err := json.Unmarshal([]byte(body[1:]), &open); err != nil {
		st.t.Fatal(err)
	}
	if len(open.Upgrades) != 1 || open.Upgrades[0] != "websocket" {
		st.t.Fatalf("upgrades %v", open.Upgrades)
	}
	p.sid = open.SID
	return p
}

func (p *poller) url() string {
	base := p.bases[int(p.n.Add(1)-1)%len(p.bases)]
	u := base + "/socket.io/?EIO=4&transport=polling"
	if p.sid != "" {
		u += "&sid=" + p.sid
	}
	return u
}

func (p *poller) do(method, query string, body []byte) (int, string) {
	p.t.Helper()
	req, _ := http.NewRequest(method, p.url()+query, bytes.NewReader(body))
	resp, err := p.hc.Do(req)
	if err != nil {
		p.t.Fatalf("%s: %v", method, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (p *poller) get() string {
	p.t.Helper()
	status, body := p.do(http.MethodGet, "", nil)
	if status != 200 {
		p.t.Fatalf("GET: %d %q", status, body)
	}
	return body
}

func (p *poller) post(body string) {
	p.t.Helper()
	status, reply := p.do(http.MethodPost, "", []byte(body))
	if status != 200 || reply != "ok" {
		p.t.Fatalf("POST %q: %d %q", body, status, reply)
	}
}

// getSkipping polls until a payload holds something besides `connections`
// updates and pings (answered).
func (p *poller) getSkipping() []string {
	p.t.Helper()
	for {
		var out []string
		for _, pk := range strings.Split(p.get(), "\x1e") {
			switch {
			case pk == "2":
				p.post("3")
			case strings.HasPrefix(pk, `42["connections"`):
			default:
				out = append(out, pk)
			}
		}
		if len(out) > 0 {
			return out
		}
	}
}

func (p *poller) connect(tok string) string {
	p.t.Helper()
	p.post(`40{"token":"` + tok + `"}`)
	got := p.getSkipping()
	if !strings.HasPrefix(got[0], `40{"sid":"`) {
		p.t.Fatalf("connect reply %q", got)
	}
	var r struct{ SID string }
	_ = json.Unmarshal([]byte(got[0][2:]), &r)
	return r.SID
}

func TestPollingHandshakeAndErrors(t *testing.T) {
	st := newStack(t)
	base := "http://" + st.gw.Addr().String() + "/socket.io/"
	p := st.poller()
	cases := []struct {
		name, method, url string
		body              string
		status            int
		want              string
	}{
		{"unknown sid", "GET", base + "?EIO=4&transport=polling&sid=nope", "", 400, `{"code":1,"message":"Session ID unknown"}`},
		{"bad EIO", "GET", base + "?EIO=3&transport=polling", "", 400, `{"code":5,"message":"Unsupported protocol version"}`},
		{"bad transport", "GET", base + "?EIO=4&transport=flash", "", 400, `{"code":0,"message":"Transport unknown"}`},
		{"POST without sid", "POST", base + "?EIO=4&transport=polling", "40", 400, `{"code":2,"message":"Bad handshake method"}`},
		{"PUT", "PUT", base + "?EIO=4&transport=polling&sid=" + p.sid, "", 400, `{"code":2,"message":"Bad handshake method"}`},
		{"oversized POST", "POST", base + "?EIO=4&transport=polling&sid=" + p.sid, strings.Repeat("x", 1_000_001), 413, "payload too large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, tc.url, strings.NewReader(tc.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status || strings.TrimSpace(string(b)) != tc.want {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, b, tc.status, tc.want)
			}
		})
	}
	// The oversized POST ended that session.
	if status, _ := p.do(http.MethodGet, "", nil); status != 400 {
		t.Fatalf("poll after 413: %d", status)
	}
}

func TestPollingFlow(t *testing.T) {
	st := newStack(t)
	sub, _ := st.nc.SubscribeSync("sb.in.>")
	_ = st.nc.Flush()
	p := st.poller()
	sid := p.connect(st.token("quinn"))

	// Batched POST: two events in one payload, answered "ok".
	p.post(`42["a",1]` + "\x1e" + `42["b",2]`)
	for _, want := range []string{`[1]`, `[2]`} {
		m, err := sub.NextMsg(2 * time.Second)
		for err == nil && m.Subject == "sb.in.connect" {
			m, err = sub.NextMsg(2 * time.Second)
		}
		if err != nil || string(m.Data) != want {
			t.Fatalf("event body %v %v, want %s", m, err, want)
		}
	}

	// Everything queued while no poll waits comes back in one response, in order.
	cl := client.New(st.nc)
	time.Sleep(100 * time.Millisecond)
	for i := 0; i < 3; i++ {
		must(t, cl.NotifyConn(sid, "n", i))
	}
	must(t, st.nc.Flush())
	eventually(t, 3*time.Second, func() bool { return st.queued(p.sid) >= 3 }, "three packets queued")
	if got := strings.Join(p.getSkipping(), "|"); got != `42["n",0]|42["n",1]|42["n",2]` {
		t.Fatalf("queued payload %q", got)
	}

	// A held poll returns when data arrives.
	done := make(chan []string, 1)
	go func() { done <- p.getSkipping() }()
	time.Sleep(200 * time.Millisecond)
	must(t, cl.NotifyConn(sid, "late", "x"))
	select {
	case got := <-done:
		if got[0] != `42["late","x"]` {
			t.Fatalf("held poll got %q", got)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("held poll not answered")
	}

	// Binary both ways: b+base64 attachments.
	p.post(`451-["up",{"_placeholder":true,"num":0}]` + "\x1e" + "bAQID")
	m, err := sub.NextMsg(2 * time.Second)
	if err != nil || string(m.Data) != `[{"_binary":"AQID"}]` {
		t.Fatalf("binary event on NATS: %v %v", m, err)
	}
	must(t, cl.NotifyConn(sid, "down", json.RawMessage(`{"f":{"_binary":"BAUG"}}`)))
	if got := strings.Join(p.getSkipping(), "|"); got != `451-["down",{"f":{"_placeholder":true,"num":0}}]|bBAUG` {
		t.Fatalf("binary delivery %q", got)
	}

	// A POSTed close answers the pending poll with a NOOP.
	go func() { done <- strings.Split(p.get(), "\x1e") }()
	time.Sleep(200 * time.Millisecond)
	p.post("1")
	select {
	case got := <-done:
		if got[len(got)-1] != "6" {
			t.Fatalf("pending poll after close got %q", got)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("pending poll not answered after close")
	}
	eventually(t, 3*time.Second, func() bool { return len(st.presenceList("quinn")) == 0 }, "slot released")
}

func TestPollingConcurrentGetClosesSession(t *testing.T) {
	st := newStack(t)
	p := st.poller()
	p.connect(st.token("rob"))
	first := make(chan string, 1)
	go func() {
		for {
			// A `connections` update may still be on its way after the
			// CONNECT reply: poll again until a GET is held.
			_, body := p.do(http.MethodGet, "", nil)
			if !strings.HasPrefix(body, `42["connections"`) {
				first <- body
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	status, body := p.do(http.MethodGet, "", nil)
	if status != 400 {
		t.Fatalf("second GET: %d %q", status, body)
	}
	select {
	case b := <-first:
		if parts := strings.Split(b, "\x1e"); parts[len(parts)-1] != "1" {
			t.Fatalf("first GET got %q, want a close packet", b)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("first GET not answered")
	}
	if status, _ := p.do(http.MethodGet, "", nil); status != 400 {
		t.Fatalf("GET after close: %d", status)
	}
}

func TestPollingPingAndTimeout(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) {
		c.PingInterval = 200 * time.Millisecond
		c.PingTimeout = 300 * time.Millisecond
	})
	p := st.poller()
	p.connect(st.token("sue"))
	for i := 0; i < 3; i++ {
		if got := p.get(); !strings.Contains(got, "2") {
			t.Fatalf("poll %d got %q, want a ping", i, got)
		}
		p.post("3")
	}
	// No more polls or pongs: the session ends and the slot is released.
	eventually(t, 3*time.Second, func() bool { return len(st.presenceList("sue")) == 0 }, "slot released after ping timeout")
}

func TestPollingUpgradeToWebSocket(t *testing.T) {
	st := newStack(t)
	p := st.poller()
	sid := p.connect(st.token("tia"))
	held := make(chan string, 1)
	go func() { held <- p.get() }()
	time.Sleep(100 * time.Millisecond)

	wsURL := fmt.Sprintf("ws://%s/socket.io/?EIO=4&transport=websocket&sid=%s", st.gw.Addr(), p.sid)
	c, _, err := websocket.DefaultDialer.Dial(wsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.WriteMessage(websocket.TextMessage, []byte("2probe"))
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, b, err := c.ReadMessage(); err != nil || string(b) != "3probe" {
		t.Fatalf("probe answer %q %v", b, err)
	}
	select {
	case got := <-held:
		if got != "6" {
			t.Fatalf("held poll got %q, want NOOP", got)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("held poll not released by the probe")
	}
	// A second WebSocket for the same session is accepted and closed at
	// once, as by the reference server.
	expectAcceptedAndClosed(t, wsURL)
	_ = c.WriteMessage(websocket.TextMessage, []byte("5"))
	time.Sleep(100 * time.Millisecond)
	// Deliveries now come over the WebSocket; polls get 400.
	must(t, client.New(st.nc).NotifyConn(sid, "after", "upgrade"))
	for {
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, b, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if string(b) == `42["after","upgrade"]` {
			break
		}
	}
	if status, _ := p.do(http.MethodGet, "", nil); status != 400 {
		t.Fatalf("poll after upgrade: %d", status)
	}
	// Events sent on the WebSocket work.
	sub, _ := st.nc.SubscribeSync("sb.in.ws")
	_ = st.nc.Flush()
	_ = c.WriteMessage(websocket.TextMessage, []byte(`42["ws",true]`))
	if m, err := sub.NextMsg(2 * time.Second); err != nil || string(m.Data) != "[true]" {
		t.Fatalf("event after upgrade: %v %v", m, err)
	}
}

func TestPollingCORS(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) { c.AllowedOrigins = []string{"https://app.example.com"} })
	base := "http://" + st.gw.Addr().String() + "/socket.io/?EIO=4&transport=polling"
	cases := []struct {
		method, origin string
		status         int
		acao           string
	}{
		{"GET", "https://app.example.com", 200, "https://app.example.com"},
		{"OPTIONS", "https://app.example.com", 204, "https://app.example.com"},
		{"GET", "https://evil.example.com", 403, ""},
		{"OPTIONS", "https://evil.example.com", 403, ""},
		{"GET", "", 200, ""},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest(tc.method, base, nil)
		if tc.origin != "" {
			req.Header.Set("Origin", tc.origin)
		}
		req.Header.Set("Access-Control-Request-Headers", "content-type")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status || resp.Header.Get("Access-Control-Allow-Origin") != tc.acao {
			t.Errorf("%s from %q: %d ACAO %q", tc.method, tc.origin, resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
		}
		if tc.status != 403 && tc.origin != "" && resp.Header.Get("Access-Control-Allow-Credentials") != "true" {
			t.Errorf("%s: no credentials header", tc.method)
		}
	}
}

func TestPollingWithoutStickySessions(t *testing.T) {
	st := newStack(t)
	gw2 := st.secondGateway() // on the same NATS
	a := "http://" + st.gw.Addr().String()
	b := "http://" + gw2.Addr().String()

	p := st.poller(a, b) // handshake on A, then B, A, B…
	sub, _ := st.nc.SubscribeSync("sb.in.hop")
	echo, _ := st.nc.Subscribe("sb.in.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	defer echo.Unsubscribe()
	_ = st.nc.Flush()
	sid := p.connect(st.token("uma"))
	for i := 0; i < 4; i++ {
		p.post(fmt.Sprintf(`42["hop",%d]`, i))
		if m, err := sub.NextMsg(2 * time.Second); err != nil || string(m.Data) != fmt.Sprintf("[%d]", i) {
			t.Fatalf("event %d: %v %v", i, m, err)
		}
		must(t, client.New(st.nc).NotifyConn(sid, "back", i))
		if got := p.getSkipping(); got[0] != fmt.Sprintf(`42["back",%d]`, i) {
			t.Fatalf("delivery %d: %q", i, got)
		}
	}
	p.post(`421["echo","x"]`)
	if got := p.getSkipping(); got[0] != `431["x"]` {
		t.Fatalf("ack %q", got)
	}
	if p.n.Load() < 10 {
		t.Fatalf("only %d requests", p.n.Load())
	}
	// Requests for unknown sessions still get 400 on either gateway.
	bad := &poller{t: t, bases: []string{b}, sid: "nope", hc: http.DefaultClient}
	if status, body := bad.do(http.MethodGet, "", nil); status != 400 || !strings.Contains(body, "Session ID unknown") {
		t.Fatalf("unknown sid via B: %d %q", status, body)
	}
}

func TestBinaryOverWebSocket(t *testing.T) {
	st := newStack(t)
	echo, _ := st.nc.Subscribe("sb.in.bin", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	defer echo.Unsubscribe()
	_ = st.nc.Flush()
	w, sid := st.mustConnect("vic", "")
	w.send(`451-0["bin",{"_placeholder":true,"num":0}]`)
	_ = w.c.WriteMessage(websocket.BinaryMessage, []byte{1, 2, 3})
	if got := w.expect("461-0"); got != `461-0[{"_placeholder":true,"num":0}]` {
		t.Fatalf("binary ack %q", got)
	}
	if got := w.read(); got != "<binary>\x01\x02\x03" {
		t.Fatalf("attachment %q", got)
	}
	must(t, client.New(st.nc).NotifyConn(sid, "file", socketio.Binary([]byte("hi"))))
	if got := w.expect("451-"); got != `451-["file",{"_placeholder":true,"num":0}]` {
		t.Fatalf("binary event %q", got)
	}
	if got := w.read(); got != "<binary>hi" {
		t.Fatalf("attachment %q", got)
	}
	// A text packet where an attachment is due is malformed.
	w.send(`451-["bin",{"_placeholder":true,"num":0}]`)
	w.send(`42["x"]`)
	w.expectClosed(time.Second)
}

func TestPollingMalformedInputClosesSession(t *testing.T) {
	st := newStack(t)
	for _, body := range []string{"4abc", "42{}", "42[]", `42abc["x"]`, "x", "bnot-base64!"} {
		t.Run(body, func(t *testing.T) {
			p := st.poller()
			p.connect(st.token("zed-" + body))
			start := time.Now()
			status, _ := p.do(http.MethodPost, "", []byte(body))
			if status != 200 && status != 400 {
				t.Fatalf("POST status %d", status)
			}
			// The session is gone: a held poll ends with a close packet, or
			// the next poll is refused.
			st2, b := p.do(http.MethodGet, "", nil)
			if st2 == 200 {
				if parts := strings.Split(b, "\x1e"); parts[len(parts)-1] != "1" {
					t.Fatalf("poll after malformed POST got %q", b)
				}
				st2, _ = p.do(http.MethodGet, "", nil)
			}
			if st2 != 400 {
				t.Fatalf("session still open (status %d)", st2)
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("took %v", d)
			}
		})
	}
}

func TestStopAnswersHeldPolls(t *testing.T) {
	st := newStack(t)
	p := st.poller()
	p.connect(st.token("abe"))
	held := make(chan string, 1)
	go func() { _, b := p.do(http.MethodGet, "", nil); held <- b }()
	time.Sleep(200 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := st.gw.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Stop took %v with a held poll", d)
	}
	if got := <-held; got != "1" {
		t.Fatalf("held poll got %q, want a close packet without 41", got)
	}
	eventually(t, 3*time.Second, func() bool { return len(st.presenceList("abe")) == 0 }, "slot released")
}

// queued is the number of packets waiting for a poll on a session.
func (st *stack) queued(sid string) int {
	e := st.gw.hub.engine(sid)
	if e == nil {
		return 0
	}
	t, ok := e.pollTr()
	if !ok {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, p := range t.queue {
		if !strings.Contains(string(p.Data), `["connections"`) {
			n++
		}
	}
	return n
}

func TestUpgradeOnAnotherGatewayIsRelayed(t *testing.T) {
	st := newStack(t)
	gw2 := st.secondGateway()

	p := st.poller() // the session lives on the first gateway
	sid := p.connect(st.token("ray"))
	held := make(chan string, 1)
	go func() { held <- p.get() }()
	time.Sleep(100 * time.Millisecond)

	// The WebSocket reaches the second gateway.
	wsURL := fmt.Sprintf("ws://%s/socket.io/?EIO=4&transport=websocket&sid=%s", gw2.Addr(), p.sid)
	c, _, err := websocket.DefaultDialer.Dial(wsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	read := func() string {
		t.Helper()
		for {
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, b, err := c.ReadMessage()
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if !isUpdate(string(b)) {
				return string(b)
			}
		}
	}
	must(t, c.WriteMessage(websocket.TextMessage, []byte("2probe")))
	if got := read(); got != "3probe" {
		t.Fatalf("probe answer %q", got)
	}
	select {
	case got := <-held:
		if got != "6" {
			t.Fatalf("held poll got %q, want NOOP", got)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("held poll not released by the relayed probe")
	}
	// A second WebSocket for the session is accepted and closed at once,
	// on either gateway.
	for _, addr := range []string{st.gw.Addr().String(), gw2.Addr().String()} {
		expectAcceptedAndClosed(t, fmt.Sprintf("ws://%s/socket.io/?EIO=4&transport=websocket&sid=%s", addr, p.sid))
	}
	must(t, c.WriteMessage(websocket.TextMessage, []byte("5")))
	time.Sleep(100 * time.Millisecond)
	if status, _ := p.do(http.MethodGet, "", nil); status != 400 {
		t.Fatalf("poll after upgrade: %d", status)
	}

	// Deliveries, client events and binary cross the relay.
	must(t, client.New(st.nc).NotifyConn(sid, "after", "upgrade"))
	if got := read(); got != `42["after","upgrade"]` {
		t.Fatalf("delivery %q", got)
	}
	sub, _ := st.nc.SubscribeSync("sb.in.up")
	_ = st.nc.Flush()
	must(t, c.WriteMessage(websocket.TextMessage, []byte(`451-["up",{"_placeholder":true,"num":0}]`)))
	must(t, c.WriteMessage(websocket.BinaryMessage, []byte{7, 8}))
	if m, err := sub.NextMsg(2 * time.Second); err != nil || string(m.Data) != `[{"_binary":"Bwg="}]` {
		t.Fatalf("relayed binary event: %v %v", m, err)
	}

	// A kick goes back through the relay: 41, then the close.
	w2 := st.poller()
	w2.connect(st.token("ray"))
	w2.post(fmt.Sprintf(`421["disconnectRequest",%q]`, sid))
	if got := read(); got != "41" {
		t.Fatalf("kicked socket got %q, want 41", got)
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, _, err := c.ReadMessage(); err == nil {
		t.Fatal("relayed websocket not closed after the kick")
	}
	eventually(t, 3*time.Second, func() bool { return len(st.presenceList("ray")) == 1 }, "kicked slot released")
}

func TestRelayedWebSocketCloseEndsTheSession(t *testing.T) {
	st := newStack(t)
	gw2 := st.secondGateway()
	p := st.poller()
	p.connect(st.token("rex"))
	c, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://%s/socket.io/?EIO=4&transport=websocket&sid=%s", gw2.Addr(), p.sid), nil)
	must(t, err)
	must(t, c.WriteMessage(websocket.TextMessage, []byte("2probe")))
	must(t, c.WriteMessage(websocket.TextMessage, []byte("5")))
	time.Sleep(200 * time.Millisecond)
	_ = c.Close()
	eventually(t, 3*time.Second, func() bool { return len(st.presenceList("rex")) == 0 }, "slot released after the relayed websocket closed")
	// Unknown sessions still get 400 on the second gateway.
	if _, resp, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://%s/socket.io/?EIO=4&transport=websocket&sid=nope", gw2.Addr()), nil); err == nil || resp == nil || resp.StatusCode != 400 {
		t.Fatalf("unknown sid: %v %v", resp, err)
	}
}

// secondGateway starts another gateway on the stack's NATS.
func (st *stack) secondGateway(opts ...func(*Config)) *Gateway {
	return st.secondGatewayWith(nil, opts...)
}

// secondGatewayWith starts another gateway built with the Go options gopts.
func (st *stack) secondGatewayWith(gopts []Option, opts ...func(*Config)) *Gateway {
	st.t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.MaxEnginesPerIP, cfg.HandshakeRate, cfg.HandshakeBurst = cfg.MaxEngines, 1e6, 1e6
	for _, o := range opts {
		o(&cfg)
	}
	gw, err := Start(context.Background(), slog.New(slog.NewTextHandler(st.logs, nil)), st.srv.Conn(st.t), cfg, gopts...)
	if err != nil {
		st.t.Fatal(err)
	}
	st.t.Cleanup(func() { _ = gw.Stop(context.Background()) })
	return gw
}

// expectAcceptedAndClosed dials a WebSocket that the gateway must accept
// and close at once with a normal closure.
func expectAcceptedAndClosed(t *testing.T, u string) {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		t.Fatalf("websocket %s refused: %v", u, err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, b, err := c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseNormalClosure {
		t.Fatalf("websocket %s: read %q, %v; want a normal closure", u, b, err)
	}
}
