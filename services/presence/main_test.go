package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/boot"
	"github.com/switchboard-rt/switchboard/pkg/boot/boottest"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/ops/opstest"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

func TestConfigSections(t *testing.T) {
	cfg := defaultConfig()
	env := []string{
		"SB_NATS_URL=nats://example:4222",
		"SB_PRESENCE_MAX_CONNECTIONS_PER_USER=5",
		"SB_PRESENCE_GATEWAY_TTL=2s",
		"SB_PRESENCE_CONNECTIONS_EVENTS=false",
	}
	args := []string{"-presence.bucket=other", "-log.level=warn"}
	if _, _, err := boot.Init("presence", &cfg, &cfg.Log, args, env, io.Discard); err != nil {
		t.Fatal(err)
	}
	p := cfg.Presence
	if cfg.NATS.URL != "nats://example:4222" || p.MaxConnectionsPerUser != 5 || p.GatewayTTL != 2*time.Second ||
		p.ConnectionsEvents || p.Bucket != "other" || p.Replicas != 1 || cfg.Log.Level != "warn" {
		t.Fatalf("config %+v", cfg)
	}
	bad := defaultConfig()
	if _, _, err := boot.Init("presence", &bad, &bad.Log, nil, []string{"SB_PRESENCE_MAX_CONNS=1"}, io.Discard); err == nil {
		t.Fatal("unknown setting accepted")
	}
}

func TestRunServesUntilCancelled(t *testing.T) {
	srv := natstest.Run(t)
	cfg := defaultConfig()
	cfg.NATS.URL = srv.URL()
	cfg.Ops.Listen = fmt.Sprintf("127.0.0.1:%d", natstest.FreePort(t))
	svc := boottest.Start(t, func(ctx context.Context) error {
		return run(ctx, slog.New(slog.DiscardHandler), cfg)
	})

	nc := srv.Conn(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		r, err := natsx.Request[api.ListReply](rctx, nc, subject.PresenceList, api.ListRequest{UserID: "alice"})
		rcancel()
		if err == nil {
			if len(r.Connections) != 0 {
				t.Fatalf("list %+v", r)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("presence not serving: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Metrics: one admission counted. Readiness follows NATS: false while
	// the server is down, true again once it is back.
	admit := api.AdmitRequest{Conn: api.Conn{SocketID: "s1", UserID: "alice", DeviceID: "d", Gateway: "g1", CreatedAt: time.Now()}}
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
	_, err := natsx.Request[api.AdmitReply](rctx, nc, subject.PresenceAdmit, admit)
	rcancel()
	if err != nil {
		t.Fatal(err)
	}
	if v := opstest.Value(opstest.Scrape(t, cfg.Ops.Listen), `switchboard_presence_admissions_total{result="admitted"}`); v != 1 {
		t.Fatalf("admitted = %v, want 1", v)
	}
	if code := opstest.Status(cfg.Ops.Listen, "/readyz"); code != 200 {
		t.Fatalf("readyz %d with NATS up", code)
	}
	srv.Down()
	waitStatus(t, cfg.Ops.Listen, "/readyz", 503)
	if code := opstest.Status(cfg.Ops.Listen, "/healthz"); code != 200 {
		t.Fatalf("healthz %d with NATS down: the process is alive", code)
	}
	srv.Up()
	waitStatus(t, cfg.Ops.Listen, "/readyz", 200)
	svc.Stop()
}

// Without NATS, run waits for it until its context ends.
func TestRunWaitsForNATS(t *testing.T) {
	cfg := defaultConfig()
	cfg.NATS.URL = fmt.Sprintf("nats://127.0.0.1:%d", natstest.FreePort(t))
	cfg.Ops.Listen = ""
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	if err := run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), cfg); err == nil || !strings.Contains(err.Error(), "connect nats") {
		t.Fatalf("run without NATS: %v", err)
	}
	if waited := time.Since(start); waited < 900*time.Millisecond {
		t.Fatalf("gave up after %v, before its context ended", waited)
	}
}

// waitStatus waits up to 10 s for path at addr to answer code.
func waitStatus(t *testing.T, addr, path string, code int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := opstest.Status(addr, path)
		if got == code {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s answered %d, want %d", path, got, code)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Started while JetStream has no quorum, run keeps trying instead of
// exiting, and serves once the nodes are back.
func TestRunWaitsForJetStream(t *testing.T) {
	boottest.WaitsForJetStream(t, func(ctx context.Context, url string) error {
		cfg := defaultConfig()
		cfg.NATS.URL = url
		cfg.Ops.Listen = ""
		return run(ctx, slog.New(slog.DiscardHandler), cfg)
	}, func(ctx context.Context, nc *nats.Conn) error {
		_, err := natsx.Request[api.ListReply](ctx, nc, subject.PresenceList, api.ListRequest{UserID: "alice"})
		return err
	})
}
