package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/client"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
)

func TestOpenPacket(t *testing.T) {
	st := newStack(t)
	w := st.dial("", nil)
	for key, want := range map[string]any{"pingInterval": 25000.0, "pingTimeout": 20000.0, "maxPayload": 1000000.0} {
		if w.open[key] != want {
			t.Errorf("open[%s] = %v, want %v", key, w.open[key], want)
		}
	}
	if sid, _ := w.open["sid"].(string); len(sid) != 20 {
		t.Errorf("sid %q, want 20 characters", sid)
	}
	if up, ok := w.open["upgrades"].([]any); !ok || len(up) != 0 {
		t.Errorf("upgrades = %v, want []", w.open["upgrades"])
	}
}

func TestHandshakeHTTPErrors(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) {
		c.AllowedOrigins = []string{"https://app.example.com", "http://localhost:*"}
	})
	base := fmt.Sprintf("ws://%s/socket.io/", st.gw.Addr())
	cases := []struct {
		name, url, origin string
		status            int
		body              string
	}{
		{"old protocol", base + "?EIO=3&transport=websocket", "", 400, `{"code":5,"message":"Unsupported protocol version"}`},
		{"no EIO", base + "?transport=websocket", "", 400, `{"code":5,"message":"Unsupported protocol version"}`},
		{"unknown transport", base + "?EIO=4&transport=carrier-pigeon", "", 400, `{"code":0,"message":"Transport unknown"}`},
		{"unknown sid", base + "?EIO=4&transport=websocket&sid=nope", "", 400, `{"code":1,"message":"Session ID unknown"}`},
		{"foreign origin", base + "?EIO=4&transport=websocket", "https://evil.example.com", 403, `{"code":4,"message":"Forbidden"}`},
		{"listed origin", base + "?EIO=4&transport=websocket", "https://app.example.com", 101, ""},
		{"localhost any port", base + "?EIO=4&transport=websocket", "http://localhost:8081", 101, ""},
		{"localhost lookalike", base + "?EIO=4&transport=websocket", "http://localhost.evil.com:8081", 403, `{"code":4,"message":"Forbidden"}`},
		{"no origin (native app)", base + "?EIO=4&transport=websocket", "", 101, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.origin != "" {
				h.Set("Origin", tc.origin)
			}
			c, resp, err := websocket.DefaultDialer.Dial(tc.url, h)
			if c != nil {
				defer c.Close()
			}
			if resp == nil {
				t.Fatalf("no response: %v", err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.body != "" {
				var b strings.Builder
				buf := make([]byte, 512)
				n, _ := resp.Body.Read(buf)
				b.Write(buf[:n])
				if strings.TrimSpace(b.String()) != tc.body {
					t.Fatalf("body %q, want %q", b.String(), tc.body)
				}
			}
		})
	}
}

func TestConnectRefusalsKeepEngineOpen(t *testing.T) {
	st := newStack(t)
	good := st.token("alice")
	cases := []struct {
		name   string
		query  string
		header http.Header
		auth   string
		want   string
	}{
		{"no token", "", nil, ``, `44{"message":"Token not provided"}`},
		{"empty auth", "", nil, `{}`, `44{"message":"Token not provided"}`},
		{"empty token", "", nil, `{"token":""}`, `44{"message":"Token not provided"}`},
		{"null token", "", nil, `{"token":null}`, `44{"message":"Token not provided"}`},
		{"bearer without token", "", nil, `{"token":"Bearer "}`, `44{"message":"Token not provided"}`},
		{"numeric token", "", nil, `{"token":123}`, `44{"message":"Unauthorized"}`},
		{"object token", "", nil, `{"token":{"a":1}}`, `44{"message":"Unauthorized"}`},
		{"garbage token", "", nil, `{"token":"abc"}`, `44{"message":"Unauthorized"}`},
		{"basic scheme", "", nil, `{"token":"Basic abc"}`, `44{"message":"Invalid authentication method. Only Bearer is supported."}`},
		{"lower-case bearer", "", nil, `{"token":"bearer ` + good + `"}`, `44{"message":"Invalid authentication method. Only Bearer is supported."}`},
		{"basic header", "", http.Header{"Authorization": {"Basic x"}}, ``, `44{"message":"Invalid authentication method. Only Bearer is supported."}`},
		{"bad device query", "deviceId=a%2Fb", nil, `{"token":"` + good + `"}`, `44{"message":"Invalid deviceId"}`},
		{"device with space", "deviceId=a%20b", nil, `{"token":"` + good + `"}`, `44{"message":"Invalid deviceId"}`},
		{"empty device", "deviceId=", nil, `{"token":"` + good + `"}`, `44{"message":"Invalid deviceId"}`},
		{"oversized device", "deviceId=" + strings.Repeat("d", 129), nil, `{"token":"` + good + `"}`, `44{"message":"Invalid deviceId"}`},
		{"non-string device", "", nil, `{"token":"` + good + `","deviceId":5}`, `44{"message":"Invalid deviceId"}`},
		{"unknown namespace", "", nil, `/admin,{"token":"` + good + `"}`, `44/admin,{"message":"Invalid namespace"}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := st.dial(tc.query, tc.header)
			auth := tc.auth
			if strings.HasPrefix(auth, "/") {
				w.send("40" + auth)
			} else {
				w.send("40" + auth)
			}
			if got := w.read(); got != tc.want {
				t.Fatalf("reply %q, want %q", got, tc.want)
			}
			if strings.Contains(tc.query, "deviceId") {
				return // the query stays wrong for this engine
			}
			// The engine connection stays open: a fresh token succeeds on it.
			if got := w.connect(`{"token":"` + st.token("retry-"+tc.name) + `"}`); !strings.HasPrefix(got, `40{"sid":"`) {
				t.Fatalf("retry reply %q", got)
			}
		})
	}
}

func TestTokenSources(t *testing.T) {
	st := newStack(t)
	tok := st.token("bob")
	cases := []struct {
		name   string
		query  string
		header http.Header
		auth   string
	}{
		{"raw in auth", "", nil, `{"token":"` + tok + `"}`},
		{"bearer in auth", "", nil, `{"token":"Bearer ` + tok + `"}`},
		{"header", "", http.Header{"Authorization": {"Bearer " + st.token("bob-header")}}, ``},
		{"query", "token=" + st.token("bob-query"), nil, ``},
		{"auth wins over bad header", "", http.Header{"Authorization": {"Basic x"}}, `{"token":"` + tok + `"}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := st.dial(tc.query, tc.header)
			if got := w.connect(strings.ReplaceAll(tc.auth, tok, st.token("bob-"+tc.name))); !strings.HasPrefix(got, `40{"sid":"`) {
				t.Fatalf("reply %q", got)
			}
		})
	}
}

func TestQueryTokenCanBeSwitchedOff(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) { c.AllowQueryToken = false })
	w := st.dial("token="+st.token("bob"), nil)
	if got := w.connect(""); got != `44{"message":"Token not provided"}` {
		t.Fatalf("reply %q", got)
	}
	if strings.Contains(st.logs.String(), st.token("bob")[:20]) {
		t.Fatal("token found in logs")
	}
}

func TestHeartbeatAndPingTimeout(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) {
		c.PingInterval = 200 * time.Millisecond
		c.PingTimeout = 600 * time.Millisecond
	})
	w, _ := st.mustConnect("carol", "")
	for i := 0; i < 3; i++ { // answered pings keep the connection
		if got, err := w.skipUpdates(time.Second); err != nil || got != "2" {
			t.Fatalf("want ping, got %q %v", got, err)
		}
		w.send("3")
	}
	start := time.Now()
	if got, _ := w.skipUpdates(time.Second); got != "2" {
		t.Fatalf("want ping, got %q", got)
	}
	w.expectClosed(2 * time.Second) // unanswered ping: closed after pingTimeout
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("closed after %v, before the ping timeout", d)
	}
	eventually(t, 3*time.Second, func() bool { return len(st.presenceList("carol")) == 0 }, "slot released")
}

func TestConnectTimeout(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) { c.ConnectTimeout = 200 * time.Millisecond })
	w := st.dial("", nil)
	w.expectClosed(2 * time.Second)
	// A refused CONNECT does not count as connected either.
	w = st.dial("", nil)
	if got := w.connect(`{"token":"bad"}`); got != `44{"message":"Unauthorized"}` {
		t.Fatalf("reply %q", got)
	}
	w.expectClosed(2 * time.Second)
	// A connected engine is not closed.
	w, _ = st.mustConnect("dave", "")
	if got, err := w.skipUpdates(500 * time.Millisecond); err == nil {
		t.Fatalf("unexpected frame %q", got)
	} else if !errors.Is(err, errReadTimeout) {
		t.Fatalf("connection closed: %v", err)
	}
}

func TestMaxPayloadCloses1009(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) { c.MaxPayload = 4096 })
	w, _ := st.mustConnect("erin", "")
	w.send(`42["big","` + strings.Repeat("x", 5000) + `"]`)
	if ce := w.expectClosed(2 * time.Second); ce.Code != websocket.CloseMessageTooBig {
		t.Fatalf("close code %d, want 1009", ce.Code)
	}
}

func TestMalformedInputClosesOnlyThatConnection(t *testing.T) {
	st := newStack(t)
	bystander, _ := st.mustConnect("frank", "")
	for _, frame := range []string{"4abc", "42{}", "42[]", "42abc[\"x\"]", "43[]", "xyz", "", "9", "0", "44{\"message\":\"x\"}", "41{}", "40[]", "42[1]", "42[\"x\""} {
		t.Run(fmt.Sprintf("%q", frame), func(t *testing.T) {
			w, _ := st.mustConnect("gina", "")
			w.send(frame)
			start := time.Now()
			w.expectClosed(time.Second)
			if d := time.Since(start); d > 500*time.Millisecond {
				t.Fatalf("closed after %v", d)
			}
		})
	}
	t.Run("binary frame", func(t *testing.T) {
		w, _ := st.mustConnect("gina", "")
		_ = w.c.WriteMessage(websocket.BinaryMessage, []byte{1, 2, 3})
		w.expectClosed(time.Second)
	})
	// Slots of the closed connections are released, and the bystander works.
	eventually(t, 3*time.Second, func() bool { return len(st.presenceList("gina")) == 0 }, "slots released")
	if err := client.New(st.nc).NotifyUser("frank", "still", "here"); err != nil {
		t.Fatal(err)
	}
	if got := bystander.expect(`42["still"`); got != `42["still","here"]` {
		t.Fatalf("bystander got %q", got)
	}
}

func TestClientEventsReachNATS(t *testing.T) {
	st := newStack(t)
	sub, err := st.nc.SubscribeSync("sb.in.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	w, sid := st.mustConnect("hank", "deviceId=tab-1")
	w.send(`42["chat.message",{"text":"hi"},2]`)
	m, err := sub.NextMsg(2 * time.Second)
	for err == nil && m.Subject == "sb.in.connect" {
		if m.Header.Get(api.HeaderSocket) != sid || string(m.Data) != "[]" {
			t.Errorf("connect event %v %s: the auth payload must not reach NATS", m.Header, m.Data)
		}
		m, err = sub.NextMsg(2 * time.Second)
	}
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := subject.In("chat.message"); m.Subject != want {
		t.Errorf("subject %q, want %q", m.Subject, want)
	}
	if string(m.Data) != `[{"text":"hi"},2]` {
		t.Errorf("body %s", m.Data)
	}
	for h, want := range map[string]string{api.HeaderUser: "hank", api.HeaderDevice: "tab-1", api.HeaderSocket: sid, api.HeaderEvent: "chat.message", api.HeaderNamespace: "/"} {
		if got := m.Header.Get(h); got != want {
			t.Errorf("header %s = %q, want %q", h, got, want)
		}
	}
	if m.Reply != "" {
		t.Error("event without ack was sent as a request")
	}
	for _, h := range []string{"Authorization", "Token"} {
		if m.Header.Get(h) != "" {
			t.Errorf("header %s leaked onto the bus", h)
		}
	}
	if strings.Contains(string(m.Data), st.token("hank")[:20]) {
		t.Error("token on the bus")
	}
}

func TestClientAcks(t *testing.T) {
	st := newStack(t)
	ok, _ := st.nc.Subscribe("sb.in.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	defer ok.Unsubscribe()
	one, _ := st.nc.Subscribe("sb.in.one", func(m *nats.Msg) { _ = m.Respond([]byte(`{"a":1}`)) })
	defer one.Unsubscribe()
	bad, _ := st.nc.Subscribe("sb.in.fail", func(m *nats.Msg) {
		ev, err := client.ParseEvent(st.nc, m)
		if err == nil {
			_ = ev.Fail(409, "nope")
		}
	})
	defer bad.Unsubscribe()
	slow, _ := st.nc.Subscribe("sb.in.slow", func(*nats.Msg) {})
	defer slow.Unsubscribe()
	_ = st.nc.Flush()

	w, _ := st.mustConnect("ivy", "")
	cases := []struct{ send, want string }{
		{`427["echo",1,"two"]`, `437[1,"two"]`},
		{`428["one"]`, `438[{"a":1}]`},
		{`429["fail"]`, `439[{"status":"error","message":"nope"}]`},
		{`4210["nobody-home"]`, `4310[{"status":"error","message":"No handler for event nobody-home"}]`},
		{`4211["connect"]`, `4311[{"status":"error","message":"Reserved event name: connect"}]`},
	}
	for _, tc := range cases {
		w.send(tc.send)
		if got := w.expect("43"); got != tc.want {
			t.Errorf("%s: ack %q, want %q", tc.send, got, tc.want)
		}
	}
	start := time.Now()
	w.send(`4212["slow"]`)
	if got := w.expect("43"); got != `4312[{"status":"error","message":"Service unavailable"}]` {
		t.Errorf("slow ack %q", got)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("timeout ack after %v", d)
	}
	w.send(`42["connect"]`)
	if got := w.expect(`42["exception"`); got != `42["exception",{"status":"error","message":"Reserved event name: connect"}]` {
		t.Errorf("exception %q", got)
	}
}

func TestDeliveriesReachTheRightSockets(t *testing.T) {
	st := newStack(t)
	a1, a1sid := st.mustConnect("ann", "deviceId=phone")
	a2, _ := st.mustConnect("ann", "deviceId=web")
	b1, _ := st.mustConnect("ben", "deviceId=phone")
	cl := client.New(st.nc)
	// Give the connections updates time to land, then drain them.
	time.Sleep(200 * time.Millisecond)
	drain := func(ws ...*wsClient) {
		for _, w := range ws {
			for {
				if s, err := w.tryRead(50 * time.Millisecond); err != nil || s == "" {
					break
				}
			}
		}
	}
	drain(a1, a2, b1)
	silent := func(w *wsClient, name string) {
		t.Helper()
		if s, err := w.skipUpdates(150 * time.Millisecond); err == nil {
			t.Errorf("%s got unexpected %q", name, s)
		}
	}

	must(t, cl.NotifyUser("ann", "greeting", "hello"))
	for _, w := range []*wsClient{a1, a2} {
		if got := w.expect(`42["greeting"`); got != `42["greeting","hello"]` {
			t.Errorf("user delivery %q", got)
		}
	}
	silent(b1, "ben")

	must(t, cl.NotifyDevice("ann", "web", "only", map[string]int{"n": 1}))
	if got := a2.expect(`42["only"`); got != `42["only",{"n":1}]` {
		t.Errorf("device delivery %q", got)
	}
	silent(a1, "ann/phone")
	silent(b1, "ben")

	must(t, cl.NotifyConn(a1sid, "direct", nil))
	if got := a1.expect(`42["direct"`); got != `42["direct"]` {
		t.Errorf("conn delivery %q", got)
	}
	silent(a2, "ann/web")

	must(t, cl.Broadcast("all", []int{1, 2}))
	for _, w := range []*wsClient{a1, a2, b1} {
		if got := w.expect(`42["all"`); got != `42["all",[1,2]]` {
			t.Errorf("broadcast %q", got)
		}
	}

	// A plain-text body (nats pub ... hello) arrives as a string.
	subj, _ := subject.OutUser("ann")
	m := nats.NewMsg(subj)
	m.Header.Set(api.HeaderEvent, "greeting")
	m.Data = []byte("hello there")
	must(t, st.nc.PublishMsg(m))
	if got := a1.expect(`42["greeting"`); got != `42["greeting","hello there"]` {
		t.Errorf("text delivery %q", got)
	}
	a2.expect(`42["greeting"`)

	// Header names in any case (nats pub -H sb-event:…).
	m = nats.NewMsg(subj)
	m.Header["sb-event"] = []string{"lower"}
	m.Data = []byte(`1`)
	must(t, st.nc.PublishMsg(m))
	if got := a1.expect(`42["lower"`); got != `42["lower",1]` {
		t.Errorf("lower-case header delivery %q", got)
	}
	a2.expect(`42["lower"`)

	// Without Sb-Event, or with a reserved name, nothing is delivered and a
	// requester gets an error.
	for _, ev := range []string{"", "disconnect"} {
		m := nats.NewMsg(subj)
		if ev != "" {
			m.Header.Set(api.HeaderEvent, ev)
		}
		m.Data = []byte(`"x"`)
		reply, err := st.nc.RequestMsg(m, time.Second)
		if err != nil {
			t.Fatalf("request: %v", err)
		}
		if e := natsx.ErrorFromMsg(reply); e == nil || e.Code != 400 {
			t.Errorf("event %q: reply %v", ev, e)
		}
	}
	silent(a1, "ann/phone")
}

func TestServerToClientAck(t *testing.T) {
	st := newStack(t)
	w, sid := st.mustConnect("joe", "")
	done := make(chan []json.RawMessage, 1)
	go func() {
		args, err := client.New(st.nc).EmitWithAck(context.Background(), sid, "question", "ready?")
		if err != nil {
			t.Errorf("emit with ack: %v", err)
		}
		done <- args
	}()
	got, err := w.skipUpdates(3 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var id int
	if _, err := fmt.Sscanf(got, "42%d[", &id); err != nil || !strings.HasSuffix(got, `["question","ready?"]`) {
		t.Fatalf("event %q", got)
	}
	w.send(fmt.Sprintf(`43%d["yes",42]`, id))
	select {
	case args := <-done:
		if len(args) != 2 || string(args[0]) != `"yes"` || string(args[1]) != "42" {
			t.Fatalf("ack args %s", args)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no ack")
	}
}

func TestTooManyConnectionsAndRelease(t *testing.T) {
	st := newStack(t)
	var ws []*wsClient
	for i := 0; i < 3; i++ {
		w, _ := st.mustConnect("kim", "")
		ws = append(ws, w)
	}
	w4 := st.dial("", nil)
	if got := w4.connect(`{"token":"` + st.token("kim") + `"}`); got != `44{"message":"Too many connections"}` {
		t.Fatalf("4th connection: %q", got)
	}
	_ = ws[0].c.Close()
	eventually(t, 3*time.Second, func() bool { return len(st.presenceList("kim")) == 2 }, "slot released")
	if got := w4.connect(`{"token":"` + st.token("kim") + `"}`); !strings.HasPrefix(got, `40{"sid"`) {
		t.Fatalf("retry after release: %q", got)
	}
}

func TestVanishingMidHandshakeLeaksNoSlot(t *testing.T) {
	st := newStack(t)
	tok := st.token("liz")
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _, err := websocket.DefaultDialer.Dial(st.url(""), nil)
			if err != nil {
				t.Error(err)
				return
			}
			_, _, _ = c.ReadMessage() // open packet
			_ = c.WriteMessage(websocket.TextMessage, []byte(`40{"token":"`+tok+`"}`))
			_ = c.Close() // gone before the CONNECT is answered
		}()
	}
	wg.Wait()
	eventually(t, 5*time.Second, func() bool {
		return len(st.gw.hub.engines()) == 0 && st.gw.hub.count() == 0 && len(st.presenceList("liz")) == 0
	}, "no slots held")
	for i := 0; i < 3; i++ {
		st.mustConnect("liz", "")
	}
}

func TestDisconnectRequestSends41(t *testing.T) {
	st := newStack(t)
	w1, _ := st.mustConnect("max", "")
	w2, sid2 := st.mustConnect("max", "")
	other, otherSid := st.mustConnect("ned", "")
	w1.send(fmt.Sprintf(`421["disconnectRequest",%q]`, otherSid))
	if got := w1.expect("431"); !strings.Contains(got, `"status":"error"`) {
		t.Fatalf("refusal %q", got)
	}
	w1.send(fmt.Sprintf(`422["disconnectRequest",%q]`, sid2))
	if got := w1.expect("432"); got != `432[{"status":"ok"}]` {
		t.Fatalf("ack %q", got)
	}
	if got := w2.expect("41"); got != "41" {
		t.Fatalf("kicked socket got %q, want 41", got)
	}
	w2.expectClosed(2 * time.Second)
	// The other user's socket is untouched.
	must(t, client.New(st.nc).NotifyConn(otherSid, "ping", 1))
	if got := other.expect(`42["ping"`); got != `42["ping",1]` {
		t.Fatalf("bystander got %q", got)
	}
}

func TestStopDrainsWithout41(t *testing.T) {
	st := newStack(t)
	w, _ := st.mustConnect("olga", "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() { _ = st.gw.Stop(ctx) }()
	for {
		s, err := w.tryRead(3 * time.Second)
		if err != nil {
			ce, ok := err.(*websocket.CloseError)
			if !ok || ce.Code != websocket.CloseGoingAway {
				t.Fatalf("close %v, want 1001", err)
			}
			break
		}
		if s == "41" {
			t.Fatal("drain sent 41")
		}
	}
	eventually(t, 3*time.Second, func() bool { return len(st.presenceList("olga")) == 0 }, "slot released on drain")
}

func TestSlowClientIsDisconnectedNotSilentlyDropped(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) { c.SendQueue = 8 })
	// A client with a tiny receive buffer that reads nothing for a while.
	c, _, err := smallBufferDialer().Dial(st.url(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_, _, _ = c.ReadMessage() // open packet
	_ = c.WriteMessage(websocket.TextMessage, []byte(`40{"token":"`+st.token("pia")+`"}`))
	_, msg, _ := c.ReadMessage()
	var reply struct{ SID string }
	if err := json.Unmarshal(msg[2:], &reply); err != nil {
		t.Fatalf("connect reply %q", msg)
	}
	sid := reply.SID
	cl := client.New(st.nc)
	payload := strings.Repeat("z", 16<<10)
	const n = 600
	for i := 0; i < n; i++ {
		if err := cl.NotifyConn(sid, "bulk", map[string]any{"i": i, "p": payload}); err != nil {
			t.Fatal(err)
		}
	}
	must(t, st.nc.Flush())
	// The client reads nothing until now; the server must have closed it.
	eventually(t, 10*time.Second, func() bool { return st.gw.hub.count() == 0 }, "slow client disconnected")
	// Everything it did receive is a gap-free prefix.
	next := 0
	for {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, b, err := c.ReadMessage()
		if err != nil {
			break
		}
		s := string(b)
		if !strings.HasPrefix(s, `42["bulk"`) {
			continue
		}
		var ev []json.RawMessage
		_ = json.Unmarshal([]byte(s[2:]), &ev)
		var body struct{ I int }
		_ = json.Unmarshal(ev[1], &body)
		if body.I != next {
			t.Fatalf("message %d after %d: a message was dropped while open", body.I, next-1)
		}
		next++
	}
	if next >= n {
		t.Fatalf("received all %d messages; the queue never overflowed", n)
	}
}

func (st *stack) presenceList(uid string) []api.Conn {
	st.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := natsx.Request[api.ListReply](ctx, st.nc, subject.PresenceList, api.ListRequest{UserID: uid})
	if err != nil {
		st.t.Fatalf("presence list: %v", err)
	}
	return r.Connections
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestSocketsReadmittedAfterNATSReconnect(t *testing.T) {
	st := newStack(t)
	_, sid := st.mustConnect("yuri", "")
	// Presence purges the socket while the gateway is cut off…
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := natsx.Request[api.ReleaseReply](ctx, st.nc, subject.PresenceRelease, api.ReleaseRequest{SocketID: sid, UserID: "yuri"}); err != nil {
		t.Fatal(err)
	}
	if n := len(st.presenceList("yuri")); n != 0 {
		t.Fatalf("%d sockets after purge", n)
	}
	// …and the gateway registers it again once NATS is back.
	st.srv.Restart()
	eventually(t, 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r, err := natsx.Request[api.ListReply](ctx, st.nc, subject.PresenceList, api.ListRequest{UserID: "yuri"})
		return err == nil && len(r.Connections) == 1 && r.Connections[0].SocketID == sid
	}, "socket re-admitted")
}

func TestOversizedFullMessageGets1009(t *testing.T) {
	st := newStack(t)
	big := []byte(`42["big","` + strings.Repeat("x", 1_100_000) + `"]`)
	for i := 0; i < 3; i++ {
		// A client that is busy writing the whole message before it reads
		// anything (as a single-threaded JavaScript client is).
		c, _, err := websocket.DefaultDialer.Dial(st.url(""), nil)
		must(t, err)
		_, _, _ = c.ReadMessage() // open packet
		_ = c.WriteMessage(websocket.TextMessage, big)
		time.Sleep(300 * time.Millisecond)
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, _, err = c.ReadMessage()
		ce, ok := err.(*websocket.CloseError)
		if !ok || ce.Code != websocket.CloseMessageTooBig {
			t.Fatalf("try %d: %v, want close 1009", i, err)
		}
		_ = c.Close()
	}
}

func TestRepeatedRefusalsCloseTheEngine(t *testing.T) {
	st := newStack(t)
	w := st.dial("", nil)
	for i := 0; i < 9; i++ {
		if got := w.connect(`{"token":"bad"}`); got != `44{"message":"Unauthorized"}` {
			t.Fatalf("try %d: %q", i, got)
		}
	}
	// The tenth refusal is still answered, then the connection ends.
	if got := w.connect(`{"token":"bad"}`); got != `44{"message":"Unauthorized"}` {
		t.Fatalf("last try: %q", got)
	}
	w.expectClosed(2 * time.Second)
}

// Deliveries to a socket that carry Sb-Revision arrive only when newer than
// every revision it got before (presence's `connections` from instances
// whose updates crossed); those without it always arrive, and a bad
// revision is dropped.
func TestDeliveryRevisionsKeepTheNewest(t *testing.T) {
	st := newStack(t)
	w, sid := st.mustConnect("ann", "")
	subj, err := subject.OutConn(sid)
	if err != nil {
		t.Fatal(err)
	}
	// Above any revision of presence's own update for this socket.
	const base = 1 << 40
	for _, tc := range []struct {
		rev  string
		data string
	}{
		{strconv.Itoa(base + 5), `"r5"`},
		{strconv.Itoa(base + 3), `"r3"`},
		{strconv.Itoa(base + 5), `"r5 again"`},
		{"", `"plain"`},
		{"x7", `"bad"`},
		{strconv.Itoa(base + 7), `"r7"`},
	} {
		m := nats.NewMsg(subj)
		m.Header.Set(api.HeaderEvent, "list")
		if tc.rev != "" {
			m.Header.Set(api.HeaderRevision, tc.rev)
		}
		m.Data = []byte(tc.data)
		must(t, st.nc.PublishMsg(m))
	}
	for _, want := range []string{`42["list","r5"]`, `42["list","plain"]`, `42["list","r7"]`} {
		if got := w.expect(`42["list"`); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	if s, err := w.skipUpdates(200 * time.Millisecond); err == nil {
		t.Fatalf("unexpected %q", s)
	}
}
