package main

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/boot"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
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
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), cfg) }()

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
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return")
	}
}

func TestRunFailsWithoutNATS(t *testing.T) {
	cfg := defaultConfig()
	cfg.NATS.URL = "nats://127.0.0.1:1"
	if err := run(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), cfg); err == nil {
		t.Fatal("run without NATS succeeded")
	}
}
