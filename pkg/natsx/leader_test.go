package natsx

import (
	"context"
	"errors"
	"strconv"
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
			ctx, nc, kv := bucketB(t)
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

// LastMsgsDirect reads values and delete markers of many subjects at once,
// leaves out the subjects without messages, and refuses more subjects than
// the server answers.
func TestLastMsgsDirect(t *testing.T) {
	ctx, nc, kv := bucketB(t)
	rev1, err := kv.PutString(ctx, "k1", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.PutString(ctx, "k2", "v2"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, "k2"); err != nil {
		t.Fatal(err)
	}
	got, err := LastMsgsDirect(ctx, nc, "KV_b", []string{"$KV.b.k1", "$KV.b.k2", "$KV.b.none"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("got %d messages, want 2: %v", len(got), got)
	}
	if m := got["$KV.b.k1"]; m == nil || string(m.Data) != "v1" || m.Sequence != rev1 || m.Time.IsZero() {
		t.Fatalf("k1: %+v", m)
	}
	if m := got["$KV.b.k2"]; m == nil || m.Header.Get("KV-Operation") != "PURGE" || m.Sequence != rev1+2 {
		t.Fatalf("k2: %+v", m)
	}
	for _, tc := range []struct {
		name   string
		stream string
		subjs  []string
		ok     bool
	}{
		{"nothing asked", "KV_b", nil, true},
		{"none found", "KV_b", []string{"$KV.b.none"}, true},
		{"at the bound", "KV_b", manySubjects(MaxDirectBatch), true},
		{"past the bound", "KV_b", manySubjects(MaxDirectBatch + 1), false},
		{"missing stream", "KV_none", []string{"$KV.none.k"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LastMsgsDirect(ctx, nc, tc.stream, tc.subjs)
			if (err == nil) != tc.ok {
				t.Fatalf("err %v, want ok %v", err, tc.ok)
			}
			if tc.ok && len(got) != 0 {
				t.Fatalf("got %d messages, want none", len(got))
			}
		})
	}
}

func manySubjects(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "$KV.b.many." + strconv.Itoa(i)
	}
	return out
}

// A status answer (here: more messages than the server sends at once,
// asked through a wildcard) comes back as a StatusError.
func TestLastMsgsDirectStatus(t *testing.T) {
	ctx, nc, kv := bucketB(t)
	for i := range MaxDirectBatch + 1 {
		if _, err := kv.PutString(ctx, "many."+strconv.Itoa(i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	_, err := LastMsgsDirect(ctx, nc, "KV_b", []string{"$KV.b.many.>"})
	var se *StatusError
	if !errors.As(err, &se) || se.Status != "413" {
		t.Fatalf("err %v, want status 413", err)
	}
}

// bucketB is a key-value bucket "b" on an embedded server, a connection to
// it, and a context bounding the test's requests.
func bucketB(t *testing.T) (context.Context, *nats.Conn, jetstream.KeyValue) {
	t.Helper()
	nc := natstest.Run(t).Conn(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "b"})
	if err != nil {
		t.Fatal(err)
	}
	return ctx, nc, kv
}
