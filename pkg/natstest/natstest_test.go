package natstest

import (
	"context"
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
