package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
)

// The shipped cluster configuration (deploy/nats/cluster.conf, as
// docker-compose.yml and deploy/k8s run it) forms a three-node JetStream
// cluster: the admin user provisions presence's bucket with three replicas,
// presence admits through it as its own user, and goes on admitting once
// a node is killed.
func TestShippedClusterConfig(t *testing.T) {
	bin := buildNATSServer(t)
	passwords, env := userPasswords()
	env = append(env, "ROUTE_PASSWORD=route-pw")
	var ports, routes [3]int
	for i := range 3 {
		ports[i], routes[i] = natstest.FreePort(t), natstest.FreePort(t)
		env = append(env, fmt.Sprintf("NATS_ROUTE_%d=nats-route://route:route-pw@127.0.0.1:%d", i+1, routes[i]))
	}
	var nodes [3]interface{ Kill() error }
	for i := range 3 {
		dir := t.TempDir()
		shippedConf(t, dir)
		cmd := runNATS(t, bin, ports[i], append(env, fmt.Sprintf("NATS_SERVER_NAME=n%d", i+1)),
			"-c", filepath.Join(dir, "cluster.conf"), "--cluster", fmt.Sprintf("nats://127.0.0.1:%d", routes[i]))
		nodes[i] = cmd.Process
	}
	var urls []string
	for _, p := range ports {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	url := strings.Join(urls, ",")
	connect := func(user string) *nats.Conn {
		nc, err := nats.Connect(url, nats.UserInfo(user, passwords[user]), nats.CustomInboxPrefix("_INBOX_"+user), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
		if err != nil {
			t.Fatalf("connect as %s: %v", user, err)
		}
		t.Cleanup(nc.Close)
		return nc
	}

	cfg := presencesvc.DefaultConfig()
	cfg.Replicas = 3
	admin := connect("admin")
	// The cluster elects its JetStream meta leader first.
	if err := natsx.Retry(context.Background(), 30*time.Second, func(ctx context.Context) error {
		return presencesvc.Provision(ctx, admin, cfg)
	}); err != nil {
		t.Fatalf("provision R3: %v", err)
	}
	js, _ := jetstream.New(admin)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	info, err := js.Stream(ctx, "KV_"+cfg.Bucket)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if got := info.CachedInfo().Config.Replicas; got != 3 {
		t.Fatalf("bucket replicas %d, want 3", got)
	}

	svc, err := presencesvc.Start(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), connect("presence"), cfg)
	if err != nil {
		t.Fatalf("start presence as its user: %v", err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	app := connect("gateway")
	// Admits answer again once the bucket's stream has a leader (an
	// election takes a few seconds); until then they fail.
	admit := func(sid string) error {
		deadline := time.Now().Add(20 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_, err := natsx.Request[api.AdmitReply](ctx, app, subject.PresenceAdmit, api.AdmitRequest{Conn: api.Conn{SocketID: sid, UserID: "alice", DeviceID: "d", Gateway: "g1", CreatedAt: time.Now()}})
			cancel()
			if err == nil || natsx.CodeOf(err) == api.CodeTooMany || time.Now().After(deadline) {
				return err
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if err := admit("s1"); err != nil {
		t.Fatalf("admit: %v", err)
	}
	_ = nodes[0].Kill()
	if err := admit("s2"); err != nil {
		t.Fatalf("admit with a node killed: %v", err)
	}
}
