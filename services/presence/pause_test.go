package main

// A presence process paused (SIGSTOP) for longer than gateway_ttl finds the
// heartbeats it missed queued when it resumes: it must not purge the
// gateways that stayed alive. The test binary runs itself as the presence
// binary, so the pause is real.

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

func TestMain(m *testing.M) {
	natstest.ServeIfChild() // natstest.RunCluster's nodes
	if os.Getenv("PRESENCE_TEST_CHILD") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func TestPausedPresencePurgesNoLiveGateway(t *testing.T) {
	srv := natstest.Run(t)
	nc := srv.Conn(t)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "PRESENCE_TEST_CHILD=1", "SB_NATS_URL="+srv.URL(), "SB_PRESENCE_GATEWAY_TTL=1s", "SB_LOG_LEVEL=warn", "SB_OPS_LISTEN=")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGCONT); _ = cmd.Process.Kill(); _ = cmd.Wait() })

	// A live gateway heartbeats throughout.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		hb, _ := json.Marshal(api.Heartbeat{Gateway: "live", Sockets: 1, Digest: api.SocketDigest(0, "s1")})
		for ctx.Err() == nil {
			_ = nc.Publish(subject.GatewayHeartbeat, hb)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	conn := api.Conn{SocketID: "s1", UserID: "alice", DeviceID: "d", Gateway: "live", CreatedAt: time.Now()}
	deadline := time.Now().Add(10 * time.Second)
	for {
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		_, err := natsx.Request[api.AdmitReply](rctx, nc, subject.PresenceAdmit, api.AdmitRequest{Conn: conn})
		rcancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("presence never answered: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	disconnected, err := nc.SubscribeSync(subject.EventDisconnected)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if m, err := disconnected.NextMsg(3 * time.Second); err == nil {
		t.Fatalf("a live gateway's socket was purged after the pause: %s", m.Data)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer rcancel()
	r, err := natsx.Request[api.ListReply](rctx, nc, subject.PresenceList, api.ListRequest{UserID: "alice"})
	if err != nil || len(r.Connections) != 1 {
		t.Fatalf("alice holds %+v, %v", r, err)
	}
}
