package devstack

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// startProfile runs a stack of the given profile on random ports. Its
// dial closes the client connections only after the stack stopped, so
// that the stack drains them itself.
func startProfile(t *testing.T, profile string) *testStack {
	t.Helper()
	cfg, err := ProfileConfig(profile)
	if err != nil {
		t.Fatalf("profile config: %v", err)
	}
	cfg.NATSServer.Listen = "127.0.0.1:0"
	cfg.NATSServer.StoreDir = t.TempDir()
	cfg.Gateway.Listen = "127.0.0.1:0"
	cfg.Ops.Listen = "127.0.0.1:0"
	if profile == ProfileDefault {
		cfg.Services = []string{ServiceAuth, ServicePresence, ServiceGateway}
	}
	st, err := Start(context.Background(), testLogger(t), cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	ts := &testStack{Stack: st, t: t}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := st.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
		for _, c := range ts.conns {
			_ = c.Close()
		}
	})
	return ts
}

type testStack struct {
	*Stack
	t     *testing.T
	conns []*websocket.Conn
}

func (ts *testStack) dial() *wsClient {
	ts.t.Helper()
	url := "ws://" + ts.GatewayAddr().String() + "/socket.io/?EIO=4&transport=websocket"
	conn, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		ts.t.Fatalf("dial %s: %v", url, err)
	}
	if resp.Body != nil {
		_ = resp.Body.Close()
	}
	ts.conns = append(ts.conns, conn)
	return &wsClient{t: ts.t, conn: conn}
}

// busMessages records the messages on sb.> (every Switchboard subject).
type busMessages struct {
	t    *testing.T
	sub  *nats.Subscription
	seen []*nats.Msg
}

func subscribeBus(t *testing.T, st *testStack) *busMessages {
	t.Helper()
	nc, err := nats.Connect(st.NATSURL())
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	sub, err := nc.SubscribeSync(subject.Prefix + ".>")
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	return &busMessages{t: t, sub: sub}
}

// next returns the next message on subj.
func (b *busMessages) next(subj string) *nats.Msg {
	b.t.Helper()
	for {
		m, err := b.sub.NextMsg(5 * time.Second)
		if err != nil {
			b.t.Fatalf("waiting for %s: %v", subj, err)
		}
		b.seen = append(b.seen, m)
		if m.Subject == subj {
			return m
		}
	}
}

// in is the subject of client event name.
func in(name string) string {
	s, err := subject.In(name)
	if err != nil {
		panic(err)
	}
	return s
}

// openEngine reads the Engine.IO open packet and returns its settings.
func (c *wsClient) openEngine() (pingInterval, pingTimeout int) {
	c.t.Helper()
	open := c.expect("0")
	var hs struct {
		SID          string `json:"sid"`
		PingInterval int    `json:"pingInterval"`
		PingTimeout  int    `json:"pingTimeout"`
	}
	if err := json.Unmarshal([]byte(open[1:]), &hs); err != nil || hs.SID == "" {
		c.t.Fatalf("engine.io open packet %q: %v", open, err)
	}
	return hs.PingInterval, hs.PingTimeout
}

// nextPacket returns the next frame that is not a ping, failing the test on
// a read error.
func (c *wsClient) nextPacket(what string) string {
	c.t.Helper()
	s, err := c.next()
	if err != nil {
		c.t.Fatalf("waiting for %s: %v", what, err)
	}
	return s
}

// connectNS sends CONNECT with auth to ns and checks the reply (the first
// packet after it is returned by the caller's next read).
func (c *wsClient) connectNS(ns, auth string) string {
	c.t.Helper()
	prefix := "40"
	if ns != "/" {
		prefix = "40" + ns + ","
	}
	c.send(prefix + auth)
	reply := c.nextPacket("CONNECT reply")
	body, ok := strings.CutPrefix(reply, prefix)
	var sid struct {
		SID string `json:"sid"`
	}
	if !ok || json.Unmarshal([]byte(body), &sid) != nil || sid.SID == "" {
		c.t.Fatalf("CONNECT reply = %q, want %s{\"sid\":...}", reply, prefix)
	}
	return sid.SID
}

func TestEchoProfileConfig(t *testing.T) {
	c, err := ProfileConfig(ProfileEcho)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	g := c.Gateway
	if c.Profile != ProfileEcho ||
		g.PingInterval != 300*time.Millisecond || g.PingTimeout != 200*time.Millisecond ||
		g.ConnectTimeout != time.Second ||
		strings.Join(g.Namespaces, " ") != "/ /custom" ||
		strings.Join(g.AllowedOrigins, " ") != "*" {
		t.Errorf("echo profile = %+v", c)
	}
	if c.Presence.ConnectionsEvents {
		t.Error("echo profile sends connections events")
	}
	if strings.Join(c.Services, ",") != "presence,echo,gateway" {
		t.Errorf("services = %v", c.Services)
	}
	if d, err := ProfileConfig(ProfileDefault); err != nil || d.Profile != "" || strings.Join(d.Services, ",") != "gateway,auth,presence,timer" {
		t.Errorf("default profile = %+v, %v", d, err)
	}
	if _, err := ProfileConfig("bogus"); err == nil {
		t.Error("unknown profile accepted")
	}
	c.Profile = "bogus"
	if err := c.Validate(); err == nil {
		t.Error("Validate accepts an unknown profile")
	}
}

func TestEchoProfileSendsAuthPayloadFirstAndEchoes(t *testing.T) {
	st := startProfile(t, ProfileEcho)
	bus := subscribeBus(t, st)
	c := st.dial()
	if pi, pt := c.openEngine(); pi != 300 || pt != 200 {
		t.Errorf("open packet ping %d/%d, want 300/200", pi, pt)
	}

	c.connectNS("/", `{"token":"abc"}`)
	if got, want := c.nextPacket("auth event"), `42["auth",{"token":"abc"}]`; got != want {
		t.Fatalf("first packet after CONNECT = %q, want %q", got, want)
	}
	// Only this profile forwards the payload: it is the sb.in.connect body.
	if m := bus.next(in(api.EventConnect)); string(m.Data) != `[{"token":"abc"}]` {
		t.Errorf("sb.in.connect body = %q, want %q", m.Data, `[{"token":"abc"}]`)
	}

	c.connectNS("/custom", `{"k":[1,"two"]}`)
	if got, want := c.nextPacket("auth event on /custom"), `42/custom,["auth",{"k":[1,"two"]}]`; got != want {
		t.Fatalf("first packet after CONNECT to /custom = %q, want %q", got, want)
	}

	c.send(`421["message-with-ack",1,"2",{"3":[true]}]`)
	if got, want := c.nextPacket("ack"), `431[1,"2",{"3":[true]}]`; got != want {
		t.Errorf("ack = %q, want %q", got, want)
	}
	c.send(`42/custom,["message",{"a":null},"x"]`)
	if got, want := c.nextPacket("message-back"), `42/custom,["message-back",{"a":null},"x"]`; got != want {
		t.Errorf("echo = %q, want %q", got, want)
	}

	// A namespace the profile does not serve is refused.
	c.send(`40/nope,`)
	if got, want := c.nextPacket("CONNECT_ERROR"), `44/nope,{"message":"Invalid namespace"}`; got != want {
		t.Errorf("reply = %q, want %q", got, want)
	}
}

func TestEchoProfileWithoutAuthPayloadSendsEmptyObject(t *testing.T) {
	st := startProfile(t, ProfileEcho)
	c := st.dial()
	c.openEngine()
	c.connectNS("/", "")
	if got, want := c.nextPacket("auth event"), `42["auth",{}]`; got != want {
		t.Fatalf("first packet after CONNECT = %q, want %q", got, want)
	}
}

func TestEchoProfileClosesEngineWithoutConnect(t *testing.T) {
	st := startProfile(t, ProfileEcho)
	c := st.dial()
	c.openEngine()
	start := time.Now()
	var err error
	for err == nil {
		_, err = c.next()
	}
	// connect timeout 1000 ms
	if d := time.Since(start); d < 800*time.Millisecond || d > 3*time.Second {
		t.Fatalf("engine without CONNECT closed after %v (%v), want about 1 s", d, err)
	}
}

func TestDefaultProfileKeepsAuthPayloadOffNATS(t *testing.T) {
	st := startProfile(t, ProfileDefault)
	bus := subscribeBus(t, st)
	tok, err := MintToken("alice", time.Hour, nil)
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	c := st.dial()
	c.openEngine()
	auth, _ := json.Marshal(map[string]string{"token": tok, "secret": "s3cr3t-payload"})
	c.connectNS("/", string(auth))

	m := bus.next(in(api.EventConnect))
	if string(m.Data) != `[]` {
		t.Errorf("sb.in.connect body = %q, want []", m.Data)
	}
	if m.Header.Get(api.HeaderUser) != "alice" {
		t.Errorf("sb.in.connect %s = %q, want alice", api.HeaderUser, m.Header.Get(api.HeaderUser))
	}
	c.send(`42["chat","hi"]`)
	bus.next(in("chat"))
	if err := c.conn.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	bus.next(in(api.EventDisconnect))
	bus.next(subject.EventDisconnected) // presence released the slot

	// Only the verify request carries the token; no message carries the
	// rest of the auth payload.
	verified := false
	for _, m := range bus.seen {
		all := m.Subject + " " + string(m.Data)
		for k, v := range m.Header {
			all += " " + k + ":" + strings.Join(v, ",")
		}
		if m.Subject == subject.AuthVerify {
			verified = true
			if strings.Contains(all, "s3cr3t-payload") {
				t.Errorf("%s carries the auth payload: %q", m.Subject, all)
			}
			continue
		}
		for _, secret := range []string{tok, "s3cr3t-payload"} {
			if strings.Contains(all, secret) {
				t.Errorf("%s carries the auth payload: %q", m.Subject, all)
			}
		}
	}
	if !verified {
		t.Error("no sb.auth.verify seen: the check saw too little")
	}
}
