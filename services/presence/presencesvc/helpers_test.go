package presencesvc

import (
	"context"
	"encoding/json"
	"errors"

	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

const wait = 5 * time.Second

// testLog shows warnings and errors (go test prints them for failing tests).
func testLog() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// testConfig is the default configuration with a gateway TTL long enough
// that no test without heartbeats purges by accident.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.GatewayTTL = time.Minute
	return cfg
}

func startSvc(t testing.TB, nc *nats.Conn, cfg Config) *Service {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := Start(ctx, testLog(), nc, cfg)
	if err != nil {
		t.Fatalf("start presence: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop presence: %v", err)
		}
	})
	return s
}

// setup runs a server, one connection and one presence instance.
func setup(t testing.TB, cfg Config) (*natstest.Server, *nats.Conn) {
	t.Helper()
	srv := natstest.Run(t)
	nc := srv.Conn(t)
	startSvc(t, nc, cfg)
	return srv, nc
}

var created = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.FixedZone("CET", 3600))

func newConn(uid, sid, gw string) api.Conn {
	return api.Conn{
		SocketID:  sid,
		UserID:    uid,
		DeviceID:  "dev-" + sid,
		IP:        "10.0.0.1",
		UserAgent: "test-agent",
		CreatedAt: created,
		Gateway:   gw,
	}
}

func request[Resp any](t testing.TB, nc *nats.Conn, subj string, req any) (Resp, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	return natsx.Request[Resp](ctx, nc, subj, req)
}

func admit(t testing.TB, nc *nats.Conn, c api.Conn) (api.AdmitReply, error) {
	t.Helper()
	return request[api.AdmitReply](t, nc, subject.PresenceAdmit, api.AdmitRequest{Conn: c})
}

func mustAdmit(t testing.TB, nc *nats.Conn, c api.Conn) int {
	t.Helper()
	r, err := admit(t, nc, c)
	if err != nil {
		t.Fatalf("admit %s/%s: %v", c.UserID, c.SocketID, err)
	}
	return r.Connections
}

func release(t testing.TB, nc *nats.Conn, uid, sid string) bool {
	t.Helper()
	r, err := request[api.ReleaseReply](t, nc, subject.PresenceRelease, api.ReleaseRequest{SocketID: sid, UserID: uid})
	if err != nil {
		t.Fatalf("release %s/%s: %v", uid, sid, err)
	}
	return r.Released
}

func list(t testing.TB, nc *nats.Conn, uid string) []api.Conn {
	t.Helper()
	r, err := request[api.ListReply](t, nc, subject.PresenceList, api.ListRequest{UserID: uid})
	if err != nil {
		t.Fatalf("list %s: %v", uid, err)
	}
	return r.Connections
}

func socketIDs(conns []api.Conn) []string {
	out := make([]string, len(conns))
	for i, c := range conns {
		out[i] = c.SocketID
	}
	return out
}

// wantErr asserts err is a service error with code and message.
func wantErr(t testing.TB, err error, code int, msg string) {
	t.Helper()
	var e *natsx.Error
	if !errors.As(err, &e) {
		t.Fatalf("got error %v, want service error %d", err, code)
	}
	if e.Code != code || (msg != "" && e.Message != msg) {
		t.Fatalf("got error %d %q, want %d %q", e.Code, e.Message, code, msg)
	}
}

// chanSub subscribes subj into a buffered channel.
func chanSub(t testing.TB, nc *nats.Conn, subj string) chan *nats.Msg {
	t.Helper()
	ch := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(subj, ch)
	if err != nil {
		t.Fatalf("subscribe %s: %v", subj, err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	return ch
}

// connSub subscribes to the delivery subject of one socket.
func connSub(t testing.TB, nc *nats.Conn, sid string) chan *nats.Msg {
	t.Helper()
	subj, err := subject.OutConn(sid)
	if err != nil {
		t.Fatal(err)
	}
	return chanSub(t, nc, subj)
}

func next(t testing.TB, ch chan *nats.Msg) *nats.Msg {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(wait):
		t.Fatalf("no message within %s", wait)
		return nil
	}
}

func none(t testing.TB, ch chan *nats.Msg) {
	t.Helper()
	select {
	case m := <-ch:
		t.Fatalf("unexpected message on %s: %s %q", m.Subject, m.Header.Get(api.HeaderEvent), m.Data)
	default:
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func openKV(t testing.TB, nc *nats.Conn, bucket string) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatalf("open bucket: %v", err)
	}
	return kv
}

func kvKeys(t testing.TB, kv jetstream.KeyValue, filter string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	l, err := kv.ListKeysFiltered(ctx, filter)
	if err != nil {
		t.Fatalf("list keys: %v", err)
	}
	var keys []string
	for k := range l.Keys() {
		keys = append(keys, k)
	}
	return keys
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitServing waits until presence answers nc: on a cluster the service's
// interest reaches the other nodes a moment after it starts.
func waitServing(t testing.TB, nc *nats.Conn) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, err := nc.Request(subject.PresenceList, []byte(`{"userId":"nobody"}`), time.Second)
		if !errors.Is(err, nats.ErrNoResponders) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("presence does not answer")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
