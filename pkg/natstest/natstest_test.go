package natstest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestRestartKeepsJetStreamData(t *testing.T) {
	s := Run(t)
	url := s.URL()
	nc := s.Conn(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	s.Restart()
	if s.URL() != url {
		t.Errorf("URL changed from %s to %s", url, s.URL())
	}
	// The client reconnects by itself; the bucket survives on disk.
	var got jetstream.KeyValueEntry
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got, err = kv.Get(ctx, "k"); err == nil {
			break
		}
	}
	if got == nil || string(got.Value()) != "v" {
		t.Fatalf("after restart: %v, %v", got, err)
	}
	if !s.Server.JetStreamEnabled() {
		t.Error("JetStream not enabled")
	}
}

func TestServersAreIndependent(t *testing.T) {
	a, b := Run(t), Run(t)
	if a.URL() == b.URL() {
		t.Fatalf("two servers share %s", a.URL())
	}
	nca, ncb := a.Conn(t), b.Conn(t)
	sub, err := ncb.SubscribeSync("x")
	if err != nil {
		t.Fatal(err)
	}
	if err := ncb.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := nca.Publish("x", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if err := nca.Flush(); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(50 * time.Millisecond); err == nil {
		t.Errorf("message crossed servers: %q", m.Data)
	}
}

func TestProxyCutAndRestore(t *testing.T) {
	s := Run(t)
	p := NewProxy(t, s.URL())
	disconnected := make(chan struct{}, 1)
	nc, err := nats.Connect(p.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond),
		nats.DisconnectErrHandler(func(*nats.Conn, error) { disconnected <- struct{}{} }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	direct := s.Conn(t)
	p.Cut()
	select {
	case <-disconnected:
	case <-time.After(5 * time.Second):
		t.Fatal("cut did not disconnect the proxied client")
	}
	if !direct.IsConnected() {
		t.Fatal("a direct client lost its connection")
	}
	time.Sleep(100 * time.Millisecond)
	if nc.IsConnected() {
		t.Fatal("reconnected through a cut proxy")
	}
	p.Restore()
	deadline := time.Now().Add(5 * time.Second)
	for !nc.IsConnected() {
		if time.Now().After(deadline) {
			t.Fatal("no reconnect after restore")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMain(m *testing.M) {
	ServeIfChild()
	os.Exit(m.Run())
}

// An R3 bucket on a 3-node cluster keeps serving reads and compare-and-set
// writes when the node leading its stream is killed, and after it comes
// back.
func TestClusterSurvivesLeaderKill(t *testing.T) {
	c := RunCluster(t, 3)
	nc := c.Conn(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "r3", Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Put(ctx, "k", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "KV_r3")
	if err != nil {
		t.Fatal(err)
	}
	leader := c.Index(st.CachedInfo().Cluster.Leader)
	if leader < 0 {
		t.Fatalf("leader %q unknown", st.CachedInfo().Cluster.Leader)
	}
	c.Kill(leader)
	deadline := time.Now().Add(20 * time.Second)
	for {
		wctx, wcancel := context.WithTimeout(ctx, time.Second)
		var r uint64
		r, err = kv.Update(wctx, "k", []byte("2"), rev)
		if errors.Is(err, jetstream.ErrKeyExists) || strings.Contains(fmt.Sprint(err), "wrong last sequence") {
			// An earlier attempt was stored, its reply lost.
			if e, gerr := kv.Get(wctx, "k"); gerr == nil && string(e.Value()) == "2" {
				r, err = e.Revision(), nil
			}
		}
		wcancel()
		if err == nil {
			rev = r
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no write after the leader's kill: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.Restart(leader)
	c.WaitJetStream(20 * time.Second)
	if e, err := kv.Get(ctx, "k"); err != nil || string(e.Value()) != "2" || e.Revision() != rev {
		t.Fatalf("after the restart: %v %v", e, err)
	}
}
