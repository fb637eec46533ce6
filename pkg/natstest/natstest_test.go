package natstest

import (
	"context"
	"testing"
	"time"

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
