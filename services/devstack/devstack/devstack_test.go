package devstack

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/client"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/ops/opstest"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

func testLogger(t *testing.T) *slog.Logger {
	t.Helper()
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startStack runs a stack on random ports with its store in a temp dir.
func startStack(t *testing.T, services ...string) *Stack {
	t.Helper()
	return startStackWith(t, func(cfg *Config) {
		if services != nil {
			cfg.Services = services
		}
	})
}

// startStackWith starts a stack on free ports with its configuration
// changed by change.
func startStackWith(t *testing.T, change func(*Config)) *Stack {
	t.Helper()
	cfg := DefaultConfig()
	cfg.NATSServer.Listen = "127.0.0.1:0"
	cfg.NATSServer.StoreDir = t.TempDir()
	cfg.Gateway.Listen = "127.0.0.1:0"
	cfg.Ops.Listen = "127.0.0.1:0"
	change(&cfg)
	st, err := Start(context.Background(), testLogger(t), cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if st.ns != nil {
			if err := st.Stop(ctx); err != nil {
				t.Errorf("stop: %v", err)
			}
		}
	})
	return st
}

// wsClient is a bare Engine.IO/Socket.IO client over a WebSocket.
type wsClient struct {
	t    *testing.T
	conn *websocket.Conn
}

func dial(t *testing.T, st *Stack) *wsClient {
	t.Helper()
	url := "ws://" + st.GatewayAddr().String() + "/socket.io/?EIO=4&transport=websocket"
	conn, resp, err := websocket.DefaultDialer.Dial(url, http.Header{"User-Agent": {"devstack-test"}})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	if resp.Body != nil {
		_ = resp.Body.Close()
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &wsClient{t: t, conn: conn}
}

func (c *wsClient) send(s string) {
	c.t.Helper()
	if err := c.conn.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
		c.t.Fatalf("send %q: %v", s, err)
	}
}

// next returns the next text frame that is not an Engine.IO ping.
func (c *wsClient) next() (string, error) {
	for {
		if err := c.conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			return "", err
		}
		_, b, err := c.conn.ReadMessage()
		if err != nil {
			return "", err
		}
		if string(b) == "2" {
			c.send("3")
			continue
		}
		return string(b), nil
	}
}

// expect reads frames until one starts with prefix, and returns it.
func (c *wsClient) expect(prefix string) string {
	c.t.Helper()
	for {
		s, err := c.next()
		if err != nil {
			c.t.Fatalf("waiting for %q: %v", prefix, err)
		}
		if strings.HasPrefix(s, prefix) {
			return s
		}
	}
}

// connect completes the Engine.IO open and the Socket.IO CONNECT and returns
// the socket id.
func (c *wsClient) connect(token string) string {
	c.t.Helper()
	open := c.expect("0")
	var hs struct {
		SID          string   `json:"sid"`
		Upgrades     []string `json:"upgrades"`
		PingInterval int      `json:"pingInterval"`
		PingTimeout  int      `json:"pingTimeout"`
		MaxPayload   int      `json:"maxPayload"`
	}
	if err := json.Unmarshal([]byte(open[1:]), &hs); err != nil || hs.SID == "" {
		c.t.Fatalf("engine.io open packet %q: %v", open, err)
	}
	if hs.PingInterval != 25000 || hs.PingTimeout != 20000 || hs.MaxPayload != 1000000 {
		c.t.Errorf("open packet %q: want the default ping interval/timeout and max payload", open)
	}
	auth, _ := json.Marshal(map[string]string{"token": token})
	c.send("40" + string(auth))
	reply, err := c.next() // nothing may precede the CONNECT reply
	if err != nil {
		c.t.Fatalf("waiting for CONNECT reply: %v", err)
	}
	if !strings.HasPrefix(reply, "40{") {
		c.t.Fatalf("CONNECT reply = %q, want 40{\"sid\":...}", reply)
	}
	var ok struct {
		SID string `json:"sid"`
	}
	if err := json.Unmarshal([]byte(reply[2:]), &ok); err != nil || ok.SID == "" {
		c.t.Fatalf("CONNECT reply %q: no sid (%v)", reply, err)
	}
	return ok.SID
}

func TestStackAcceptsSocketIOConnectWithMintedToken(t *testing.T) {
	st := startStack(t)
	if st.GatewayAddr() == nil {
		t.Fatal("no gateway address")
	}
	tok, err := MintToken("alice", time.Hour, nil)
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	c := dial(t, st)
	sid := c.connect(tok)

	// A backend service on its own NATS connection reaches the socket.
	nc, err := nats.Connect(st.NATSURL())
	if err != nil {
		t.Fatalf("connect nats %s: %v", st.NATSURL(), err)
	}
	defer nc.Close()
	if err := client.New(nc).NotifyUser("alice", "greeting", "hello"); err != nil {
		t.Fatalf("notify: %v", err)
	}
	if got := c.expect(`42["greeting"`); got != `42["greeting","hello"]` {
		t.Errorf("delivery = %q, want %q", got, `42["greeting","hello"]`)
	}
	if err := client.New(nc).NotifyConn(sid, "direct", map[string]int{"n": 1}); err != nil {
		t.Fatalf("notify conn: %v", err)
	}
	if got := c.expect(`42["direct"`); got != `42["direct",{"n":1}]` {
		t.Errorf("delivery = %q, want %q", got, `42["direct",{"n":1}]`)
	}

	// Stopping the stack drains the gateway: the engine closes without a
	// Socket.IO DISCONNECT, so clients reconnect elsewhere.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := st.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	for {
		s, err := c.next()
		if err != nil {
			break
		}
		if strings.HasPrefix(s, "41") {
			t.Fatalf("got %q on drain, want a close without 41", s)
		}
	}
}

func TestStackRefusesTokenNotSignedWithDevSecret(t *testing.T) {
	st := startStack(t)
	c := dial(t, st)
	c.expect("0")
	c.send(`40{"token":"not-a-jwt"}`)
	if got := c.expect("4"); got != `44{"message":"Unauthorized"}` {
		t.Fatalf("reply = %q, want %q", got, `44{"message":"Unauthorized"}`)
	}
}

func TestStackWithoutServicesRunsNATSOnly(t *testing.T) {
	st := startStack(t, []string{}...)
	if st.GatewayAddr() != nil {
		t.Fatalf("gateway address %v, want none", st.GatewayAddr())
	}
	nc, err := nats.Connect(st.NATSURL())
	if err != nil {
		t.Fatalf("connect %s: %v", st.NATSURL(), err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		t.Fatalf("jetstream not enabled: %v", err)
	}
	_, err = nc.Request(subject.AuthVerify, []byte(`{"token":"x"}`), time.Second)
	if err != nats.ErrNoResponders {
		t.Fatalf("auth request err = %v, want no responders (no services run)", err)
	}
}

func TestStackServesNATSOnTheConfiguredAddress(t *testing.T) {
	st := startStack(t, ServiceAuth)
	addr := st.NATSAddr().String()
	if !strings.HasPrefix(addr, "127.0.0.1:") || strings.HasSuffix(addr, ":0") {
		t.Fatalf("nats address %q, want 127.0.0.1 with a chosen port", addr)
	}
	if !strings.HasSuffix(st.NATSURL(), addr[strings.LastIndexByte(addr, ':'):]) {
		t.Fatalf("url %q does not match address %q", st.NATSURL(), addr)
	}
	// Auth runs in dev JWT mode: the dev token verifies, over plain NATS.
	nc, err := nats.Connect(st.NATSURL())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer nc.Close()
	tok, err := MintToken("bob", time.Minute, nil)
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	req, _ := json.Marshal(map[string]string{"token": tok})
	reply, err := nc.Request(subject.AuthVerify, req, 5*time.Second)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	var v struct {
		UID string `json:"uid"`
	}
	if err := json.Unmarshal(reply.Data, &v); err != nil || v.UID != "bob" {
		t.Fatalf("verify reply %q (headers %v): want uid bob", reply.Data, reply.Header)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*Config)
		fails bool
	}{
		{"defaults", func(*Config) {}, false},
		{"nats only", func(c *Config) { c.Services = nil }, false},
		{"random port", func(c *Config) { c.NATSServer.Listen = "127.0.0.1:0" }, false},
		{"unknown service", func(c *Config) { c.Services = []string{"gateway", "mailer"} }, true},
		{"service twice", func(c *Config) { c.Services = []string{"auth", "auth"} }, true},
		{"listen without port", func(c *Config) { c.NATSServer.Listen = "127.0.0.1" }, true},
		{"listen bad port", func(c *Config) { c.NATSServer.Listen = "127.0.0.1:http" }, true},
		{"listen port out of range", func(c *Config) { c.NATSServer.Listen = ":70000" }, true},
		{"no store dir", func(c *Config) { c.NATSServer.StoreDir = "" }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.edit(&c)
			err := c.Validate()
			if (err != nil) != tt.fails {
				t.Fatalf("Validate() = %v, want error: %v", err, tt.fails)
			}
		})
	}
}

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	if c.NATSServer.Listen != "127.0.0.1:4222" || c.NATSServer.StoreDir != "data/nats" {
		t.Errorf("nats_server = %+v", c.NATSServer)
	}
	if strings.Join(c.Services, ",") != "gateway,auth,presence,timer" {
		t.Errorf("services = %v", c.Services)
	}
	if strings.Join(c.Gateway.AllowedOrigins, ",") != "http://localhost:*,http://127.0.0.1:*" {
		t.Errorf("gateway.allowed_origins = %v", c.Gateway.AllowedOrigins)
	}
	if a := AuthConfig(); a.Verifier != "jwt" || a.JWT.Secret == "" {
		t.Errorf("auth = verifier %q, secret set %v; want jwt with the dev secret", a.Verifier, a.JWT.Secret != "")
	}
}

func TestStartFailsCleanlyOnBusyPort(t *testing.T) {
	st := startStack(t, []string{}...)
	cfg := DefaultConfig()
	cfg.Services = nil
	cfg.NATSServer.StoreDir = t.TempDir()
	cfg.NATSServer.Listen = st.NATSAddr().String()
	if st2, err := Start(context.Background(), testLogger(t), cfg); err == nil {
		_ = st2.Stop(context.Background())
		t.Fatal("second stack on a busy port started")
	}
}

// The development stack accepts tokens signed with a public secret: its
// gateway listens on loopback only unless told otherwise.
func TestDefaultGatewayListensOnLoopback(t *testing.T) {
	for _, p := range Profiles {
		c, err := ProfileConfig(p)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(c.Gateway.Listen, "127.0.0.1:") {
			t.Errorf("profile %q: gateway listens on %q", p, c.Gateway.Listen)
		}
	}
}

// A busy port stops the start before the store is created or opened.
func TestBusyPortTouchesNoStore(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, setting := range []string{"nats_server.listen", "gateway.listen", "ops.listen"} {
		t.Run(setting, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.NATSServer.Listen = "127.0.0.1:0"
			cfg.NATSServer.StoreDir = filepath.Join(t.TempDir(), "nats")
			cfg.Gateway.Listen = "127.0.0.1:0"
			cfg.Ops.Listen = "127.0.0.1:0"
			busy := ln.Addr().String()
			switch setting {
			case "nats_server.listen":
				cfg.NATSServer.Listen = busy
			case "gateway.listen":
				cfg.Gateway.Listen = busy
			case "ops.listen":
				cfg.Ops.Listen = busy
			}
			_, err := Start(context.Background(), testLogger(t), cfg)
			if err == nil || !strings.Contains(err.Error(), setting) || !strings.Contains(err.Error(), "in use") {
				t.Fatalf("start on a busy %s: %v", setting, err)
			}
			if _, err := os.Stat(cfg.NATSServer.StoreDir); !os.IsNotExist(err) {
				t.Fatalf("store dir touched: %v", err)
			}
		})
	}
}

// The stack's metrics carry every service's series.
func TestStackMetrics(t *testing.T) {
	st := startStack(t)
	text := opstest.Scrape(t, st.OpsAddr().String())
	for _, series := range []string{
		"switchboard_gateway_connections",
		`switchboard_gateway_handshakes_total{result="ok"}`,
		`switchboard_auth_verifications_total{result="ok"}`,
		`switchboard_presence_admissions_total{result="admitted"}`,
		"switchboard_timer_active",
		"go_goroutines",
	} {
		if opstest.Value(text, series) < 0 {
			t.Errorf("metrics lack %s", series)
		}
	}
	if code := opstest.Status(st.OpsAddr().String(), "/readyz"); code != 200 {
		t.Errorf("readyz %d", code)
	}
	// Every series the shipped Grafana dashboard charts exists.
	raw, err := os.ReadFile("../../../deploy/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil || len(dash.Panels) == 0 {
		t.Fatalf("dashboard: %v", err)
	}
	names := regexp.MustCompile(`\b(?:switchboard|go|process)_[a-z_]+`)
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, name := range names.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_count"), "_sum")
				if !strings.Contains(text, "\n"+base) && !strings.Contains(text, "\n"+name) {
					t.Errorf("dashboard panel %q charts %s, which no service exports", p.Title, name)
				}
			}
		}
	}
}

// auth_claims reaches the stack's auth: the claims it lists come back
// with the identity.
func TestStackAuthClaims(t *testing.T) {
	st := startStackWith(t, func(cfg *Config) {
		cfg.Services = []string{ServiceAuth}
		cfg.AuthClaims = []string{"role"}
	})
	nc, err := nats.Connect(st.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	tok, err := MintToken("alice", time.Hour, map[string]any{"role": "admin", "plan": "pro"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	id, err := natsx.Request[api.VerifyReply](ctx, nc, subject.AuthVerify, api.VerifyRequest{Token: tok})
	if err != nil || id.UserID != "alice" || string(id.Claims) != `{"role":"admin"}` {
		t.Fatalf("verify = %+v (claims %s), %v", id, id.Claims, err)
	}
}
