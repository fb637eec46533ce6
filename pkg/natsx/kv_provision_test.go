package natsx

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/natstest"
)

// A bucket provisioned by an administrator is opened by a user that may
// only read its info and use it: nothing is updated. A missing bucket
// cannot be created by that user.
func TestOpenKVBindsProvisionedBucket(t *testing.T) {
	srv := natstest.RunWith(t, func(o *server.Options) {
		o.Users = []*server.User{
			{Username: "admin", Password: "a"},
			{Username: "svc", Password: "s", Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{"$JS.API.STREAM.INFO.KV_prov", "$JS.API.DIRECT.GET.KV_prov.>", "$KV.prov.>"}},
				Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
			}},
		}
	})
	cfg := jetstream.KeyValueConfig{Bucket: "prov", History: 1}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn := func(user, pw string) jetstream.JetStream {
		nc := srv.Conn(t, nats.UserInfo(user, pw))
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	if _, _, err := OpenKV(ctx, conn("admin", "a"), cfg); err != nil {
		t.Fatalf("provision: %v", err)
	}
	kv, ttl, err := OpenKV(ctx, conn("svc", "s"), cfg)
	if err != nil {
		t.Fatalf("bind as the service: %v", err)
	}
	if ttl != MarkerTTL {
		t.Fatalf("marker TTL %s", ttl)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("put: %v", err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	if _, _, err := OpenKV(short, conn("svc", "s"), jetstream.KeyValueConfig{Bucket: "other"}); err == nil {
		t.Fatal("the service created a bucket")
	}
}
