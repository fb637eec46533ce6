package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
)

// Releases that presence does not answer are retried apart from the
// heartbeats: each used to hold the heartbeat loop for a request timeout,
// so two of them made a live gateway look dead.
func TestFailedReleasesDoNotDelayHeartbeats(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) {
		c.HeartbeatInterval, c.RequestTimeout = 100*time.Millisecond, time.Second
	})
	var beats []time.Time
	var mu sync.Mutex
	hb, err := st.nc.Subscribe(subject.GatewayHeartbeat, func(m *nats.Msg) {
		var h api.Heartbeat
		if json.Unmarshal(m.Data, &h) == nil && h.Gateway == st.gw.ID() {
			mu.Lock()
			beats = append(beats, time.Now())
			mu.Unlock()
		}
	})
	must(t, err)
	defer hb.Unsubscribe()
	// Three releases wait on a presence that never answers.
	for i := range 3 {
		st.gw.relMu.Lock()
		st.gw.releases[fmt.Sprint("gone", i)] = api.ReleaseRequest{SocketID: fmt.Sprint("gone", i), UserID: "nobody"}
		st.gw.relMu.Unlock()
	}
	st.pres.Stop()
	black, err := st.nc.QueueSubscribe(subject.PresenceRelease, "q", func(*nats.Msg) {})
	must(t, err)
	defer black.Unsubscribe()
	must(t, st.nc.Flush())
	time.Sleep(3 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	var worst time.Duration
	for i := 1; i < len(beats); i++ {
		worst = max(worst, beats[i].Sub(beats[i-1]))
	}
	if len(beats) < 20 || worst > 500*time.Millisecond {
		t.Fatalf("%d heartbeats in 3 s, longest gap %s", len(beats), worst)
	}
}

// A gateway restarted with a fixed id, within gateway_ttl, used to keep its
// previous process's slots forever (its heartbeats kept them alive).
func TestRestartWithFixedIDFreesOldSlots(t *testing.T) {
	st := newStack(t)
	gw1 := st.secondGateway(func(c *Config) { c.ID = "fixed-gw" })
	via := *st
	via.gw = gw1
	for range 3 {
		via.mustConnect("fix", "")
	}
	// The process dies: no release reaches presence.
	gw1.nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = gw1.Stop(ctx)
	if n := len(st.presenceList("fix")); n != 3 {
		t.Fatalf("%d slots before the restart, want the 3 stale ones", n)
	}
	gw2 := st.secondGateway(func(c *Config) { c.ID = "fixed-gw" })
	if n := len(st.presenceList("fix")); n != 0 {
		t.Fatalf("%d stale slots after the restart", n)
	}
	via.gw = gw2
	via.mustConnect("fix", "")
}

// A socket that closes while a readmit (after a NATS reconnect) is under
// way, after the readmit took its snapshot, leaves no slot behind: the
// readmit used to re-add it after its release.
func TestReadmitOfClosingSocketsLeavesNoSlot(t *testing.T) {
	st := newStack(t)
	w, _ := st.mustConnect("rd", "")
	st.gw.beforeReadmit = func(s *socket) {
		_ = w.c.Close()
		eventually(t, 5*time.Second, func() bool { return len(st.presenceList("rd")) == 0 }, "released on close")
	}
	st.gw.readmit()
	time.Sleep(500 * time.Millisecond) // a release in flight settles
	if n := len(st.presenceList("rd")); n != 0 {
		t.Fatalf("%d slots left by a closed socket", n)
	}
}

// A slot left behind (here admitted under this gateway's id for a socket
// it never had) locks its user out only until presence's reconciliation
// compares the gateway's digest with the index and releases it.
func TestPhantomSlotHealed(t *testing.T) {
	st := newStack(t, func(_ *Config, p *presencesvc.Config) { p.ReconcileInterval = 300 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	phantom := api.Conn{SocketID: "ghost", UserID: "pha", DeviceID: "d", Gateway: st.gw.ID(), CreatedAt: time.Now()}
	if _, err := natsx.Request[api.AdmitReply](ctx, st.nc, subject.PresenceAdmit, api.AdmitRequest{Conn: phantom}); err != nil {
		t.Fatal(err)
	}
	st.mustConnect("pha", "")
	st.mustConnect("pha", "")
	w := st.dial("", nil)
	if got := w.connect(`{"token":"` + st.token("pha") + `"}`); got != `44{"message":"Too many connections"}` {
		t.Fatalf("third connect with a phantom slot: %q", got)
	}
	eventually(t, 5*time.Second, func() bool { return len(st.presenceList("pha")) == 2 }, "phantom slot released")
	if got := w.connectReply(`{"token":"` + st.token("pha") + `"}`); !strings.HasPrefix(got, "40{") {
		t.Fatalf("connect after the heal: %q", got)
	}
}
