package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/services/auth/authsvc"
	"github.com/switchboard-rt/switchboard/services/devstack/devstack"
)

func TestTokenCommandPrintsJWTSignedWithDevSecret(t *testing.T) {
	for _, args := range [][]string{{"alice", "-ttl", "1h"}, {"-ttl=1h", "alice"}} {
		var out, errOut bytes.Buffer
		if code := cmdToken(args, &out, &errOut); code != 0 {
			t.Fatalf("token %v: exit %d, stderr %q", args, code, errOut.String())
		}
		raw := strings.TrimSpace(out.String())
		if strings.Count(out.String(), "\n") != 1 || raw == "" {
			t.Fatalf("token %v: output %q, want one line", args, out.String())
		}
		claims := jwt.RegisteredClaims{}
		_, err := jwt.ParseWithClaims(raw, &claims, func(tok *jwt.Token) (any, error) {
			return []byte(authsvc.DevSecret), nil
		}, jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired())
		if err != nil {
			t.Fatalf("token %v does not verify with the dev secret: %v", args, err)
		}
		if claims.Subject != "alice" {
			t.Errorf("sub = %q, want alice", claims.Subject)
		}
		if left := time.Until(claims.ExpiresAt.Time); left < 59*time.Minute || left > 61*time.Minute {
			t.Errorf("token expires in %v, want about 1h", left)
		}
		// And the forged variant (another secret) does not.
		if _, err := jwt.Parse(raw, func(*jwt.Token) (any, error) { return []byte("other"), nil }); err == nil {
			t.Error("token verifies with another secret")
		}
	}
}

func TestTokenCommandDefaultTTL(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := cmdToken([]string{"bob"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	claims := jwt.RegisteredClaims{}
	if _, err := jwt.ParseWithClaims(strings.TrimSpace(out.String()), &claims, func(*jwt.Token) (any, error) {
		return []byte(authsvc.DevSecret), nil
	}); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if left := time.Until(claims.ExpiresAt.Time); left < 23*time.Hour || left > 25*time.Hour {
		t.Errorf("default ttl gives %v, want 24h", left)
	}
}

func TestTokenCommandClaims(t *testing.T) {
	var out, errOut bytes.Buffer
	args := []string{"carol", "-claim", "role=admin", "-claim", "max_conns=5", "-claim", "tags=[\"a\"]", "-claim", "sub=mallory"}
	if code := cmdToken(args, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	claims := jwt.MapClaims{}
	if _, err := jwt.ParseWithClaims(strings.TrimSpace(out.String()), claims, func(*jwt.Token) (any, error) {
		return []byte(authsvc.DevSecret), nil
	}); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if claims["role"] != "admin" || claims["max_conns"] != 5.0 || fmt.Sprint(claims["tags"]) != "[a]" || claims["sub"] != "carol" {
		t.Fatalf("claims %v: want role admin, max_conns 5, tags [a], and sub still carol", claims)
	}
}

func TestTokenCommandRejectsBadArguments(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{""},
		{"alice", "bob"},
		{"alice", "-ttl", "-1h"},
		{"alice", "-ttl", "0s"},
		{"alice", "-ttl", "soon"},
		{"alice", "-unknown"},
		{"alice", "-claim", "role"},
		{"alice", "-claim", "=x"},
	} {
		var out, errOut bytes.Buffer
		if code := cmdToken(args, &out, &errOut); code != 2 {
			t.Errorf("token %q: exit %d, want 2", args, code)
		}
		if out.Len() != 0 {
			t.Errorf("token %q printed %q", args, out.String())
		}
	}
}

func TestNotifyCommandPublishesDelivery(t *testing.T) {
	s := natstest.Run(t)
	nc := s.Conn(t)
	tests := []struct {
		name    string
		args    []string
		subject string
		event   string
		data    string
	}{
		{"user", []string{"-user", "alice", "-event", "greeting", `"hello"`}, "sb.out.user.alice", "greeting", `"hello"`},
		{"device", []string{"-user", "alice", "-device", "phone-1", "-event", "greeting", `{"a":1}`}, "sb.out.device.alice.phone-1", "greeting", `{"a":1}`},
		{"encoded ids", []string{"-user", "a.b", "-device", "x y", "-event", "e", `1`}, "sb.out.device.~YS5i.~eCB5", "e", `1`},
		{"conn", []string{"-conn", "sid_1", "-event", "greeting", `[1,2]`}, "sb.out.conn.sid_1", "greeting", `[1,2]`},
		{"all", []string{"-all", "-event", "news", `null`}, "sb.out.all", "news", `null`},
		{"no payload", []string{"-user", "bob", "-event", "ping"}, "sb.out.user.bob", "ping", ``},
		{"flags after payload", []string{"-user", "dan", `"x"`, "-event", "late"}, "sb.out.user.dan", "late", `"x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub, err := nc.SubscribeSync("sb.out.>")
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = sub.Unsubscribe() }()
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			var errOut bytes.Buffer
			args := append([]string{"-nats", s.URL()}, tt.args...)
			if code := cmdNotify(args, "", io.Discard, &errOut); code != 0 {
				t.Fatalf("notify %q: exit %d, %s", args, code, errOut.String())
			}
			m, err := sub.NextMsg(5 * time.Second)
			if err != nil {
				t.Fatalf("no delivery: %v", err)
			}
			if m.Subject != tt.subject || string(m.Data) != tt.data || m.Header.Get(api.HeaderEvent) != tt.event {
				t.Fatalf("got %s %q %s=%q, want %s %q %q", m.Subject, m.Data, api.HeaderEvent, m.Header.Get(api.HeaderEvent), tt.subject, tt.data, tt.event)
			}
		})
	}
}

func TestNotifyCommandUsesEnvironmentURL(t *testing.T) {
	s := natstest.Run(t)
	nc := s.Conn(t)
	sub, err := nc.SubscribeSync("sb.out.user.carol")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	var errOut bytes.Buffer
	if code := cmdNotify([]string{"-user", "carol", "-event", "hi", `"x"`}, s.URL(), io.Discard, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if _, err := sub.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("no delivery: %v", err)
	}
}

func TestNotifyCommandRejectsBadArguments(t *testing.T) {
	s := natstest.Run(t)
	nc := s.Conn(t)
	sub, err := nc.SubscribeSync("sb.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		code int
	}{
		{"no target", []string{"-event", "e", `1`}, 2},
		{"two targets", []string{"-user", "u", "-all", "-event", "e"}, 2},
		{"device without user", []string{"-device", "d", "-all", "-event", "e"}, 2},
		{"no event", []string{"-user", "u", `1`}, 2},
		{"reserved event", []string{"-user", "u", "-event", "connect", `1`}, 1},
		{"payload not JSON", []string{"-user", "u", "-event", "e", "hello"}, 2},
		{"two payloads", []string{"-user", "u", "-event", "e", "1", "2"}, 2},
		{"unknown flag", []string{"-user", "u", "-event", "e", "-bogus"}, 2},
		{"id too long", []string{"-user", strings.Repeat("u", 2000), "-event", "e"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var errOut bytes.Buffer
			args := append([]string{"-nats", s.URL()}, tt.args...)
			if code := cmdNotify(args, "", io.Discard, &errOut); code != tt.code {
				t.Fatalf("exit %d, want %d (stderr %q)", code, tt.code, errOut.String())
			}
			if errOut.Len() == 0 {
				t.Error("no error message")
			}
		})
	}
	if m, err := sub.NextMsg(200 * time.Millisecond); err == nil {
		t.Fatalf("a refused command published %s %q", m.Subject, m.Data)
	}
}

func TestNotifyCommandReportsUnreachableNATS(t *testing.T) {
	var errOut bytes.Buffer
	code := cmdNotify([]string{"-nats", "nats://127.0.0.1:1", "-timeout", "500ms", "-user", "u", "-event", "e"}, "", io.Discard, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "connect") {
		t.Fatalf("exit %d, stderr %q; want 1 and a connect error", code, errOut.String())
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestServePrintsBannerAndStopsOnCancel(t *testing.T) {
	banner, cancel, done := serveUntilBanner(t, devstack.DefaultConfig(), "nats pub")
	if strings.Contains(banner, "eyJ") { // a JWT's encoded header
		t.Errorf("the banner holds a token; it should say how to get one:\n%s", banner)
	}
	for _, want := range []string{
		"socket.io: http://localhost:",
		"make token USER=alice",
		"bin/devstack token alice",
		`io("http://localhost:`,
		`auth: {token: "<token>"}`,
		`nats pub sb.out.user.alice '"hello"' -H Sb-Event:greeting -s nats://127.0.0.1:`,
	} {
		if !strings.Contains(banner, want) {
			t.Errorf("banner lacks %q:\n%s", want, banner)
		}
	}
	// The NATS URL printed is reachable.
	var url string
	for _, line := range strings.Split(banner, "\n") {
		if u, ok := strings.CutPrefix(line, "nats: "); ok {
			url = u
		}
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("connect to printed url %q: %v", url, err)
	}
	nc.Close()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop after cancel")
	}
}

func TestLoadConfigSelectsProfile(t *testing.T) {
	yaml := t.TempDir() + "/devstack.yaml"
	if err := os.WriteFile(yaml, []byte("profile: echo\ngateway:\n  ping_interval: 2s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name         string
		args, env    []string
		profile      string
		pingInterval time.Duration
		services     string
	}{
		{"default", nil, nil, "", 25 * time.Second, "gateway,auth,presence,timer"},
		{"flag", []string{"-profile=echo"}, nil, "echo", 300 * time.Millisecond, "presence,echo,gateway"},
		{"environment", nil, []string{"SB_PROFILE=echo"}, "echo", 300 * time.Millisecond, "presence,echo,gateway"},
		{"yaml, its settings win over the profile's", []string{"-config", yaml}, nil, "echo", 2 * time.Second, "presence,echo,gateway"},
		{"settings win over the profile's", []string{"-profile", "echo", "-gateway.ping_interval=1s"}, []string{"SB_SERVICES=echo,gateway"}, "echo", time.Second, "echo,gateway"},
		{"flag wins over environment", []string{"-profile="}, []string{"SB_PROFILE=echo"}, "", 25 * time.Second, "gateway,auth,presence,timer"},
		{"default profile keeps its services setting", []string{"-services=auth"}, nil, "", 25 * time.Second, "auth"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			cfg, log, rest, err := loadConfig(tt.args, tt.env, &out)
			if err != nil || log == nil || len(rest) != 0 {
				t.Fatalf("loadConfig: %v (rest %q)", err, rest)
			}
			if cfg.Profile != tt.profile || cfg.Gateway.PingInterval != tt.pingInterval || strings.Join(cfg.Services, ",") != tt.services {
				t.Errorf("profile %q, ping_interval %v, services %v; want %q, %v, %s",
					cfg.Profile, cfg.Gateway.PingInterval, cfg.Services, tt.profile, tt.pingInterval, tt.services)
			}
			if err := cfg.Validate(); err != nil {
				t.Errorf("validate: %v", err)
			}
			if tt.profile == devstack.ProfileEcho {
				if cfg.Gateway.PingTimeout != 200*time.Millisecond || cfg.Gateway.ConnectTimeout != time.Second ||
					strings.Join(cfg.Gateway.Namespaces, " ") != "/ /custom" || cfg.Presence.ConnectionsEvents {
					t.Errorf("echo profile settings missing: %+v", cfg)
				}
			}
		})
	}
}

func TestLoadConfigUnknownProfileFailsValidation(t *testing.T) {
	var out bytes.Buffer
	cfg, _, _, err := loadConfig([]string{"-profile=nope"}, nil, &out)
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("Validate() = %v, want an unknown profile error", err)
	}
	if _, _, _, err := loadConfig([]string{"-bogus=1"}, nil, &out); err == nil {
		t.Fatal("unknown flag accepted")
	}
}

func TestServePrintsEchoProfileBanner(t *testing.T) {
	cfg, err := devstack.ProfileConfig(devstack.ProfileEcho)
	if err != nil {
		t.Fatal(err)
	}
	banner, cancel, done := serveUntilBanner(t, cfg, "devstack notify")
	for _, want := range []string{
		"\nnats: nats://127.0.0.1:",
		"\nsocket.io: http://localhost:",
		"profile: echo (auth disabled, no connections events, ping 300/200 ms, connect timeout 1000 ms, namespaces /, /custom)",
		`auth: {token: "123"}`,
		"-conn <socket id>",
	} {
		if !strings.Contains(banner, want) {
			t.Errorf("banner lacks %q:\n%s", want, banner)
		}
	}
	for _, unwanted := range []string{"make token", `token: "ey`} {
		if strings.Contains(banner, unwanted) {
			t.Errorf("echo banner mentions %q (no auth in this profile):\n%s", unwanted, banner)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop after cancel")
	}
}

func TestTokenCommandWithSecret(t *testing.T) {
	const secret = "a-compose-secret-of-at-least-32-bytes!!"
	var out, errOut bytes.Buffer
	if code := cmdToken([]string{"bob", "-secret", secret}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut.String())
	}
	claims := jwt.RegisteredClaims{}
	_, err := jwt.ParseWithClaims(strings.TrimSpace(out.String()), &claims, func(*jwt.Token) (any, error) {
		return []byte(secret), nil
	}, jwt.WithValidMethods([]string{"HS256"}))
	if err != nil || claims.Subject != "bob" {
		t.Fatalf("token: %v %q", err, claims.Subject)
	}
}

// serveUntilBanner runs serve with cfg until its banner holds marker, and
// returns the output, a cancel for serve and serve's result channel.
func serveUntilBanner(t *testing.T, cfg devstack.Config, marker string) (string, context.CancelFunc, <-chan error) {
	t.Helper()
	cfg.NATSServer.Listen = "127.0.0.1:0"
	cfg.NATSServer.StoreDir = t.TempDir() + "/nats"
	cfg.Gateway.Listen = "127.0.0.1:0"
	cfg.Ops.Listen = "127.0.0.1:0"
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- serve(ctx, log, cfg, &out) }()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), marker) {
		select {
		case err := <-done:
			t.Fatalf("serve returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no banner; output so far %q", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return out.String(), cancel, done
}

func TestParseBench(t *testing.T) {
	b, err := parseBench([]string{"-short", "-devices", "77", "idle", "timers"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(b.which, []string{"idle", "timers"}) || b.devices != 77 || b.conns != 2000 || b.step != time.Second {
		t.Fatalf("parsed %+v", b)
	}
	b, err = parseBench([]string{"all"}, io.Discard)
	if err != nil || !slices.Equal(b.which, scenarios) || b.conns != 10000 || b.devices != 10000 {
		t.Fatalf("all: %+v, %v", b, err)
	}
	for _, args := range [][]string{nil, {"nope"}, {"-conns", "x", "idle"}} {
		if _, err := parseBench(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}
