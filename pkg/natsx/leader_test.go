package natsx

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/natstest"
)

// LastMsg and LastMsgDirect read values, delete markers (with their
// headers) and missing subjects the way the stream stores them.
func TestLastMsg(t *testing.T) {
	for _, tc := range []struct {
		name string
		get  func(context.Context, *nats.Conn, string, string) (*jetstream.RawStreamMsg, error)
	}{{"leader", LastMsg}, {"direct", LastMsgDirect}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := natstest.Run(t)
			nc := srv.Conn(t)
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "b"})
			if err != nil {
				t.Fatal(err)
			}
			rev, err := kv.PutString(ctx, "k", "v1")
			if err != nil {
				t.Fatal(err)
			}
			m, err := tc.get(ctx, nc, "KV_b", "$KV.b.k")
			if err != nil || string(m.Data) != "v1" || m.Sequence != rev || m.Subject != "$KV.b.k" || m.Time.IsZero() {
				t.Fatalf("value: %+v, %v", m, err)
			}
			if err := kv.Purge(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			m, err = tc.get(ctx, nc, "KV_b", "$KV.b.k")
			if err != nil || m.Header.Get("KV-Operation") != "PURGE" || m.Sequence != rev+1 {
				t.Fatalf("marker: %+v, %v", m, err)
			}
			if _, err := tc.get(ctx, nc, "KV_b", "$KV.b.none"); !errors.Is(err, jetstream.ErrMsgNotFound) {
				t.Fatalf("missing: %v", err)
			}
			if _, err := tc.get(ctx, nc, "KV_none", "$KV.none.k"); err == nil {
				t.Fatal("a missing stream read without error")
			}
		})
	}
}

func FuzzParseHeader(f *testing.F) {
	for _, s := range []string{"", "NATS/1.0\r\n\r\n", "NATS/1.0\r\nKV-Operation: PURGE\r\n\r\n", "NATS/1.0\r\nA: 1\r\nA: 2\r\nB:x\r\n\r\n", "HTTP/1.1\r\n", "NATS/1.0\r\nbroken\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHeader(b)
		if err == nil && h == nil {
			t.Fatal("nil header without error")
		}
	})
}
