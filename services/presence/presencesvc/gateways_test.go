package presencesvc

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// heartbeat publishes gw's heartbeat every interval until the test ends.
func heartbeat(t *testing.T, nc *nats.Conn, gw string, interval time.Duration) {
	t.Helper()
	data := mustJSON(t, api.Heartbeat{Gateway: gw, Sockets: 1})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		tk := time.NewTicker(interval)
		defer tk.Stop()
		for {
			if err := nc.Publish(subject.GatewayHeartbeat, data); err != nil {
				t.Errorf("heartbeat: %v", err)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	}()
}

// A gateway that never heartbeats is purged after gateway_ttl, by two
// presence instances at once without double releases; sockets on a live
// gateway stay.
func TestDeadGatewayPurged(t *testing.T) {
	cfg := testConfig()
	cfg.GatewayTTL = time.Second
	srv, nc := setup(t, cfg)
	nc2 := srv.Conn(t)
	startSvc(t, nc2, cfg) // learns gw1 from the connected events

	heartbeat(t, nc, "live", 100*time.Millisecond)
	// Malformed heartbeats are ignored.
	for _, junk := range []string{"", "x", `{"gateway":""}`, `{"gateway":5}`, `[]`} {
		if err := nc.Publish(subject.GatewayHeartbeat, []byte(junk)); err != nil {
			t.Fatal(err)
		}
	}
	disconnected := chanSub(t, nc, subject.EventDisconnected)
	a3 := connSub(t, nc, "a3")

	start := time.Now()
	mustAdmit(t, nc, newConn("alice", "a1", "gw1"))
	mustAdmit(t, nc2, newConn("alice", "a2", "gw1"))
	mustAdmit(t, nc, newConn("alice", "a3", "live"))
	mustAdmit(t, nc2, newConn("bob", "b1", "live"))
	mustAdmit(t, nc, newConn("bob", "b2", "gw1"))
	next(t, a3) // the admit update: [a1 a2]
	if _, err := admit(t, nc, newConn("alice", "a4", "live")); err == nil {
		t.Fatal("admit over the limit accepted")
	}

	var gone []string
	for range 3 {
		var ev api.LifecycleEvent
		if err := json.Unmarshal(next(t, disconnected).Data, &ev); err != nil {
			t.Fatal(err)
		}
		gone = append(gone, ev.Conn.SocketID)
	}
	elapsed := time.Since(start)
	slices.Sort(gone)
	if !slices.Equal(gone, []string{"a1", "a2", "b2"}) {
		t.Fatalf("purged %v", gone)
	}
	if elapsed < cfg.GatewayTTL {
		t.Fatalf("purged after %s, before the TTL", elapsed)
	}
	// Settle a few more sweeps: nothing is released twice.
	time.Sleep(2 * cfg.GatewayTTL)
	none(t, disconnected)
	// alice's live socket saw the purges; two instances purging at once may
	// send an extra update, but the last one is the final state.
	valid := []string{arr(publicJSON("alice", "a1")), arr(publicJSON("alice", "a2")), `[]`}
	var updates []string
	for len(a3) > 0 {
		m := <-a3
		wantConnections(t, m, string(m.Data)) // event name
		if !slices.Contains(valid, string(m.Data)) {
			t.Fatalf("purge update %s", m.Data)
		}
		updates = append(updates, string(m.Data))
	}
	if len(updates) < 2 || len(updates) > 4 || updates[len(updates)-1] != `[]` {
		t.Fatalf("purge updates %v", updates)
	}

	if got := socketIDs(list(t, nc, "alice")); !slices.Equal(got, []string{"a3"}) {
		t.Fatalf("alice holds %v", got)
	}
	if got := socketIDs(list(t, nc, "bob")); !slices.Equal(got, []string{"b1"}) {
		t.Fatalf("bob holds %v", got)
	}
	if keys := kvKeys(t, openKV(t, nc, cfg.Bucket), "g.gw1.>"); len(keys) != 0 {
		t.Fatalf("index keys of the dead gateway left: %v", keys)
	}
	// alice may connect again.
	mustAdmit(t, nc, newConn("alice", "a4", "live"))
	mustAdmit(t, nc, newConn("alice", "a5", "live"))
}

// State lives in KV: a new presence instance after a server restart sees
// the same connections, enforces the limit on them, and (having learnt the
// gateways from the index) purges the silent one after a full TTL.
func TestRestartKeepsState(t *testing.T) {
	cfg := testConfig()
	srv := natstest.Run(t)
	nc := srv.Conn(t)
	first := startSvc(t, nc, cfg)
	mustAdmit(t, nc, newConn("alice", "a1", "gw1"))
	mustAdmit(t, nc, newConn("alice", "a2", "gw1"))
	mustAdmit(t, nc, newConn("bob", "b1", "gw2"))
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}

	srv.Restart()
	nc2 := srv.Conn(t)
	cfg.GatewayTTL = time.Second
	heartbeat(t, nc2, "gw2", 100*time.Millisecond)
	started := time.Now()
	startSvc(t, nc2, cfg)
	if got := socketIDs(list(t, nc2, "alice")); !slices.Equal(got, []string{"a1", "a2"}) {
		t.Fatalf("after restart alice holds %v", got)
	}
	if n := mustAdmit(t, nc2, newConn("alice", "a3", "gw2")); n != 3 {
		t.Fatalf("connections %d", n)
	}
	if _, err := admit(t, nc2, newConn("alice", "a4", "gw2")); err == nil {
		t.Fatal("admit over the limit accepted after restart")
	}
	eventually(t, 5*time.Second, "purge of gw1 found in the index", func() bool {
		return slices.Equal(socketIDs(list(t, nc2, "alice")), []string{"a3"})
	})
	if d := time.Since(started); d < cfg.GatewayTTL {
		t.Fatalf("purged after %s, within the grace period", d)
	}
	if got := socketIDs(list(t, nc2, "bob")); !slices.Equal(got, []string{"b1"}) {
		t.Fatalf("bob holds %v", got)
	}
}

// The service keeps working across a server restart on the same connection.
func TestSurvivesServerRestart(t *testing.T) {
	srv, nc := setup(t, testConfig())
	mustAdmit(t, nc, newConn("alice", "a1", "gw"))
	srv.Restart()
	eventually(t, 5*time.Second, "reconnect", nc.IsConnected)
	eventually(t, 5*time.Second, "admit after restart", func() bool {
		_, err := admit(t, nc, newConn("alice", "a2", "gw"))
		return err == nil
	})
	if got := socketIDs(list(t, nc, "alice")); !slices.Equal(got, []string{"a1", "a2"}) {
		t.Fatalf("alice holds %v", got)
	}
}

// A presence instance cut off from NATS for longer than gateway_ttl hears
// no heartbeat meanwhile; once back, it must not purge the gateways that
// stayed alive (their sockets would be freed and their users go over the
// limit when the gateway readmits them).
func TestNoPurgeOfLiveGatewaysAfterOwnReconnect(t *testing.T) {
	cfg := testConfig()
	cfg.GatewayTTL = time.Second
	srv := natstest.Run(t)
	nc := srv.Conn(t)
	proxy := natstest.NewProxy(t, srv.URL())
	pnc, err := nats.Connect(proxy.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pnc.Close)
	startSvc(t, pnc, cfg)
	heartbeat(t, nc, "live", 100*time.Millisecond)
	mustAdmit(t, nc, newConn("alice", "a1", "live"))
	disconnected := chanSub(t, nc, subject.EventDisconnected)

	proxy.Cut()
	time.Sleep(2 * cfg.GatewayTTL)
	proxy.Restore()
	eventually(t, 5*time.Second, "presence reconnected", pnc.IsConnected)
	time.Sleep(2 * cfg.GatewayTTL)
	none(t, disconnected)
	if got := socketIDs(list(t, nc, "alice")); !slices.Equal(got, []string{"a1"}) {
		t.Fatalf("alice holds %v", got)
	}
}

// A purge works from a listing of the gateway's sockets; when the gateway
// comes back and readmits them while the purge runs, the purge stops and
// undoes no readmit.
func TestPurgeDoesNotUndoReadmits(t *testing.T) {
	cfg := testConfig()
	cfg.GatewayTTL = time.Second
	_, nc := setup(t, cfg)
	const n = 300
	for i := range n {
		mustAdmit(t, nc, newConn(fmt.Sprintf("u%d", i), fmt.Sprintf("s%d", i), "back"))
	}
	disconnected := chanSub(t, nc, subject.EventDisconnected)
	next(t, disconnected) // the purge has begun
	heartbeat(t, nc, "back", 100*time.Millisecond)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				mustAdmit(t, nc, newConn(fmt.Sprintf("u%d", i), fmt.Sprintf("s%d", i), "back"))
			}
		})
	}
	wg.Wait()
	time.Sleep(2 * cfg.GatewayTTL)
	missing := 0
	for i := range n {
		if len(list(t, nc, fmt.Sprintf("u%d", i))) != 1 {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d readmitted sockets were purged afterwards", missing, n)
	}
}
