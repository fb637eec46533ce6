package presencesvc

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// fakeGateway heartbeats with the digest of its sockets and answers
// presence's requests for them.
func fakeGateway(t *testing.T, nc *nats.Conn, gw string, held []api.Conn) {
	t.Helper()
	digest := uint64(0)
	for _, c := range held {
		digest = api.SocketDigest(digest, c.SocketID)
	}
	subj, err := subject.GatewayControl(gw, subject.OpSockets)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := nc.Subscribe(subj, func(m *nats.Msg) {
		var req api.GatewaySocketsRequest
		_ = json.Unmarshal(m.Data, &req)
		var page []api.Conn
		for _, c := range held {
			if c.SocketID > req.After {
				page = append(page, c)
			}
		}
		slices.SortFunc(page, func(a, b api.Conn) int {
			if a.SocketID < b.SocketID {
				return -1
			}
			return 1
		})
		more := false
		if len(page) > 1 { // one per page: the paging is exercised
			page, more = page[:1], true
		}
		b, _ := json.Marshal(api.GatewaySocketsReply{Conns: page, More: more})
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	data := mustJSON(t, api.Heartbeat{Gateway: gw, Sockets: len(held), Digest: digest})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			_ = nc.Publish(subject.GatewayHeartbeat, data)
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	}()
}

// A slot whose socket the gateway does not hold (a lost release) is
// released, and a socket the gateway holds without a slot is admitted, or
// disconnected when its user is at the limit; fresh differences (in
// flight) are left alone.
func TestReconcileHealsSlots(t *testing.T) {
	cfg := testConfig()
	cfg.ReconcileInterval = 300 * time.Millisecond
	_, nc := setup(t, cfg)
	mustAdmit(t, nc, newConn("alice", "kept", "fg"))
	mustAdmit(t, nc, newConn("alice", "phantom", "fg"))
	mustAdmit(t, nc, newConn("carol", "c1", "other"))
	mustAdmit(t, nc, newConn("carol", "c2", "other"))
	mustAdmit(t, nc, newConn("carol", "c3", "other"))
	orders := chanSub(t, nc, "sb.gw.fg.disconnect")
	fresh := newConn("dave", "fresh", "fg")
	fresh.CreatedAt = time.Now().Add(time.Hour) // just connecting
	fakeGateway(t, nc, "fg", []api.Conn{
		newConn("alice", "kept", "fg"),
		newConn("bob", "unslotted", "fg"),
		newConn("carol", "c4", "fg"), // carol holds 3 elsewhere
		fresh,
	})
	eventually(t, 5*time.Second, "phantom released, missing admitted", func() bool {
		return slices.Equal(socketIDs(list(t, nc, "alice")), []string{"kept"}) &&
			slices.Equal(socketIDs(list(t, nc, "bob")), []string{"unslotted"})
	})
	var o api.DisconnectOrder
	if err := json.Unmarshal(next(t, orders).Data, &o); err != nil || o.SocketID != "c4" {
		t.Fatalf("disconnect order %+v, %v", o, err)
	}
	if got := socketIDs(list(t, nc, "carol")); !slices.Equal(got, []string{"c1", "c2", "c3"}) {
		t.Fatalf("carol holds %v", got)
	}
	if got := list(t, nc, "dave"); len(got) != 0 {
		t.Fatalf("a socket still connecting was admitted by the reconciliation: %v", socketIDs(got))
	}
}

// A gateway whose digest matches is never asked for its sockets.
func TestReconcileQuietWhenDigestsAgree(t *testing.T) {
	cfg := testConfig()
	cfg.ReconcileInterval = 100 * time.Millisecond
	_, nc := setup(t, cfg)
	mustAdmit(t, nc, newConn("alice", "a1", "same"))
	asked := chanSub(t, nc, "sb.gw.same.sockets")
	data := mustJSON(t, api.Heartbeat{Gateway: "same", Sockets: 1, Digest: api.SocketDigest(0, "a1")})
	for range 10 {
		if err := nc.Publish(subject.GatewayHeartbeat, data); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	none(t, asked)
}
