package presencesvc

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

func TestAdmitUpToLimitThenTooMany(t *testing.T) {
	_, nc := setup(t, testConfig())
	for i := 1; i <= 3; i++ {
		if n := mustAdmit(t, nc, newConn("alice", fmt.Sprintf("a%d", i), "gw")); n != i {
			t.Fatalf("admit %d: connections %d", i, n)
		}
	}
	_, err := admit(t, nc, newConn("alice", "a4", "gw"))
	wantErr(t, err, api.CodeTooMany, "Too many connections")
	if got := socketIDs(list(t, nc, "alice")); !slices.Equal(got, []string{"a1", "a2", "a3"}) {
		t.Fatalf("alice holds %v", got)
	}
	// The limit is per user.
	if n := mustAdmit(t, nc, newConn("bob", "b1", "gw")); n != 1 {
		t.Fatalf("bob: connections %d", n)
	}
}

func TestBucketConfig(t *testing.T) {
	srv := natstest.Run(t)
	nc := srv.Conn(t)
	cfg := testConfig()
	cfg.Bucket = "custom_presence"
	s := startSvc(t, nc, cfg)
	if s.markerTTL != natsx.MarkerTTL {
		t.Errorf("delete marker TTL %s, want %s", s.markerTTL, natsx.MarkerTTL)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	st, err := openKV(t, nc, "custom_presence").Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.History() != 1 {
		t.Errorf("history %d", st.History())
	}
	// A second instance opens the existing bucket.
	startSvc(t, nc, cfg)
}

func TestAdmitLimitConfigurable(t *testing.T) {
	cfg := testConfig()
	cfg.MaxConnectionsPerUser = 1
	_, nc := setup(t, cfg)
	mustAdmit(t, nc, newConn("alice", "a1", "gw"))
	_, err := admit(t, nc, newConn("alice", "a2", "gw"))
	wantErr(t, err, api.CodeTooMany, "Too many connections")
}

// Many concurrent admits through two presence instances on two connections
// admit exactly the limit.
func TestConcurrentAdmitsAcrossInstances(t *testing.T) {
	srv, nc1 := setup(t, testConfig())
	nc2 := srv.Conn(t)
	startSvc(t, nc2, testConfig())
	conns := []*nats.Conn{nc1, nc2}

	const workers = 20
	admitted, refused, other := concurrentAdmits(t, conns, workers, func(i int) api.Conn {
		return newConn("alice", fmt.Sprintf("s%02d", i), fmt.Sprintf("gw%d", i%3))
	})
	if len(other) > 0 {
		t.Fatalf("unexpected errors: %v", other)
	}
	if len(admitted) != 3 || refused != workers-3 {
		t.Fatalf("admitted %v, refused %d", admitted, refused)
	}
	got := socketIDs(list(t, nc2, "alice"))
	slices.Sort(got)
	slices.Sort(admitted)
	if !slices.Equal(got, admitted) {
		t.Fatalf("stored %v, admitted %v", got, admitted)
	}
	// Refused sockets leave no index behind.
	if keys := kvKeys(t, openKV(t, nc1, "sb_presence"), allIndexes); len(keys) != 3 {
		t.Fatalf("index keys %v", keys)
	}
}

func TestReleaseFreesSlotAndIsIdempotent(t *testing.T) {
	_, nc := setup(t, testConfig())
	for _, sid := range []string{"a1", "a2", "a3"} {
		mustAdmit(t, nc, newConn("alice", sid, "gw"))
	}
	if !release(t, nc, "alice", "a2") {
		t.Fatal("first release: released false")
	}
	if release(t, nc, "alice", "a2") {
		t.Fatal("second release: released true")
	}
	if release(t, nc, "alice", "nope") || release(t, nc, "nobody", "a1") {
		t.Fatal("release of unknown socket: released true")
	}
	if n := mustAdmit(t, nc, newConn("alice", "a4", "gw")); n != 3 {
		t.Fatalf("admit after release: connections %d", n)
	}
	for _, sid := range []string{"a1", "a3", "a4"} {
		release(t, nc, "alice", sid)
	}
	if got := list(t, nc, "alice"); len(got) != 0 {
		t.Fatalf("after releasing all: %v", got)
	}
	kv := openKV(t, nc, "sb_presence")
	if keys := kvKeys(t, kv, ">"); len(keys) != 0 {
		t.Fatalf("keys left after releasing all: %v", keys)
	}
	// The user's key was removed; admitting again recreates it.
	if n := mustAdmit(t, nc, newConn("alice", "a5", "gw")); n != 1 {
		t.Fatalf("admit after emptying: connections %d", n)
	}
}

func TestAdmitSameSocketIsIdempotent(t *testing.T) {
	_, nc := setup(t, testConfig())
	connected := chanSub(t, nc, subject.EventConnected)
	c := newConn("alice", "a1", "gw")
	for range 3 {
		if n := mustAdmit(t, nc, c); n != 1 {
			t.Fatalf("connections %d", n)
		}
	}
	mustAdmit(t, nc, newConn("alice", "a2", "gw"))
	mustAdmit(t, nc, newConn("alice", "a3", "gw"))
	// Full, yet the admitted socket is still accepted again.
	if n := mustAdmit(t, nc, c); n != 3 {
		t.Fatalf("re-admit at limit: connections %d", n)
	}
	if got := socketIDs(list(t, nc, "alice")); !slices.Equal(got, []string{"a1", "a2", "a3"}) {
		t.Fatalf("stored %v", got)
	}
	for _, want := range []string{"a1", "a2", "a3"} {
		m := next(t, connected)
		if !strings.Contains(string(m.Data), `"socketId":"`+want+`"`) {
			t.Fatalf("connected event %s, want %s", m.Data, want)
		}
	}
	none(t, connected)
}

// Ids of any shape are stored under valid keys and kept apart.
func TestCraftedIDs(t *testing.T) {
	_, nc := setup(t, testConfig())
	ids := []string{"a.b", "a.>", "*", "~YS5i", "=x", "u 1", "émoji😀", strings.Repeat("x", 1000), "plain"}
	for i, uid := range ids {
		c := newConn(uid, ids[(i+1)%len(ids)], ids[(i+2)%len(ids)])
		if n := mustAdmit(t, nc, c); n != 1 {
			t.Fatalf("admit %q: connections %d", uid, n)
		}
	}
	for i, uid := range ids {
		got := list(t, nc, uid)
		if len(got) != 1 || got[0].SocketID != ids[(i+1)%len(ids)] || got[0].Gateway != ids[(i+2)%len(ids)] {
			t.Fatalf("list %q: %+v", uid, got)
		}
	}
	for i, uid := range ids {
		if !release(t, nc, uid, ids[(i+1)%len(ids)]) {
			t.Fatalf("release %q: false", uid)
		}
	}
	if keys := kvKeys(t, openKV(t, nc, "sb_presence"), ">"); len(keys) != 0 {
		t.Fatalf("keys left: %v", keys)
	}
}

func TestKeyTokensRoundTrip(t *testing.T) {
	for _, id := range []string{"a", "a.b", "~", "=", "~YS5i", "*", ">", "a b", "émoji", strings.Repeat("z", 300)} {
		k, err := indexKey(id, id+"-s")
		if err != nil {
			t.Fatalf("indexKey(%q): %v", id, err)
		}
		if strings.Count(k, ".") != 2 || strings.ContainsAny(k, "~*> ") {
			t.Fatalf("indexKey(%q) = %q", id, k)
		}
		gw, sid, err := parseIndexKey(k)
		if err != nil || gw != id || sid != id+"-s" {
			t.Fatalf("parseIndexKey(%q) = %q, %q, %v", k, gw, sid, err)
		}
	}
	for _, k := range []string{"u.x", "g.x", "g.x.y.z", "g.~YQ.y", "g.=YQ.y", "g..y"} {
		if _, _, err := parseIndexKey(k); err == nil {
			t.Errorf("parseIndexKey(%q): no error", k)
		}
	}
	if _, err := keyToken(""); err == nil {
		t.Error("keyToken(\"\"): no error")
	}
}

func TestMalformedRequests(t *testing.T) {
	_, nc := setup(t, testConfig())
	long := strings.Repeat("x", subject.MaxIDLen+1)
	cases := []struct {
		name string
		subj string
		body []byte
	}{
		{"admit not json", subject.PresenceAdmit, []byte("nope")},
		{"admit empty body", subject.PresenceAdmit, nil},
		{"admit array", subject.PresenceAdmit, []byte(`[1,2]`)},
		{"admit no conn", subject.PresenceAdmit, []byte(`{}`)},
		{"admit wrong types", subject.PresenceAdmit, []byte(`{"conn":{"socketId":5}}`)},
		{"admit no socket", subject.PresenceAdmit, mustJSON(t, api.AdmitRequest{Conn: newConn("u", "", "gw")})},
		{"admit no user", subject.PresenceAdmit, mustJSON(t, api.AdmitRequest{Conn: newConn("", "s", "gw")})},
		{"admit no gateway", subject.PresenceAdmit, mustJSON(t, api.AdmitRequest{Conn: newConn("u", "s", "")})},
		{"admit user too long", subject.PresenceAdmit, mustJSON(t, api.AdmitRequest{Conn: newConn(long, "s", "gw")})},
		{"admit bad date", subject.PresenceAdmit, []byte(`{"conn":{"socketId":"s","userId":"u","gateway":"g","createdAt":"yesterday"}}`)},
		{"release not json", subject.PresenceRelease, []byte("{")},
		{"release no user", subject.PresenceRelease, []byte(`{"socketId":"s"}`)},
		{"release no socket", subject.PresenceRelease, []byte(`{"userId":"u"}`)},
		{"release user too long", subject.PresenceRelease, mustJSON(t, api.ReleaseRequest{SocketID: "s", UserID: long})},
		{"list not json", subject.PresenceList, []byte("[")},
		{"list no user", subject.PresenceList, []byte(`{}`)},
		{"list user too long", subject.PresenceList, mustJSON(t, api.ListRequest{UserID: long})},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reply, err := nc.Request(tc.subj, tc.body, wait)
			if err != nil {
				t.Fatal(err)
			}
			e := natsx.ErrorFromMsg(reply)
			if e == nil || e.Code != api.CodeBadRequest || e.Message == "" {
				t.Fatalf("reply %v %q, want 400", e, reply.Data)
			}
		})
	}
	// Nothing was stored, and the service still works.
	if keys := kvKeys(t, openKV(t, nc, "sb_presence"), ">"); len(keys) != 0 {
		t.Fatalf("keys stored by bad requests: %v", keys)
	}
	mustAdmit(t, nc, newConn("u", "s", "gw"))
}

// A value that is not valid JSON (never written by presence) does not lock
// the user out: the next admit replaces it.
func TestCorruptValueIsReplaced(t *testing.T) {
	_, nc := setup(t, testConfig())
	kv := openKV(t, nc, "sb_presence")
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := kv.PutString(ctx, "u.alice", "garbage"); err != nil {
		t.Fatal(err)
	}
	if got := list(t, nc, "alice"); len(got) != 0 {
		t.Fatalf("list: %v", got)
	}
	if n := mustAdmit(t, nc, newConn("alice", "a1", "gw")); n != 1 {
		t.Fatalf("connections %d", n)
	}
}

func TestFieldsNormalized(t *testing.T) {
	_, nc := setup(t, testConfig())
	c := newConn("alice", "a1", "gw")
	c.DeviceID = ""
	c.CreatedAt = time.Time{}
	c.UserAgent = strings.Repeat("é", 400) // 800 bytes
	c.IP = strings.Repeat("1", 100)
	before := time.Now().Add(-time.Second)
	mustAdmit(t, nc, c)
	got := list(t, nc, "alice")[0]
	if got.DeviceID != "a1" {
		t.Errorf("deviceId %q, want the socket id", got.DeviceID)
	}
	if got.CreatedAt.Before(before) || got.CreatedAt.After(time.Now()) {
		t.Errorf("createdAt %v not set to now", got.CreatedAt)
	}
	if len(got.UserAgent) != maxUserAgentLen || got.UserAgent != strings.Repeat("é", maxUserAgentLen/2) {
		t.Errorf("userAgent of %d bytes", len(got.UserAgent))
	}
	if len(got.IP) != maxIPLen {
		t.Errorf("ip of %d bytes", len(got.IP))
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	srv := natstest.Run(t)
	nc := srv.Conn(t)
	mod := map[string]func(*Config){
		"zero limit":  func(c *Config) { c.MaxConnectionsPerUser = 0 },
		"tiny ttl":    func(c *Config) { c.GatewayTTL = time.Millisecond },
		"no bucket":   func(c *Config) { c.Bucket = "" },
		"bad bucket":  func(c *Config) { c.Bucket = "a.b" },
		"no replicas": func(c *Config) { c.Replicas = 0 },
	}
	for name, m := range mod {
		t.Run(name, func(t *testing.T) {
			cfg := DefaultConfig()
			m(&cfg)
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			if s, err := Start(ctx, testLog(), nc, cfg); err == nil {
				_ = s.Stop()
				t.Fatal("started")
			}
		})
	}
}

// An admit that presence takes up after its deadline (the gateway gave up
// and released the socket) is refused and leaves neither slot nor index.
func TestAdmitPastDeadlineRefused(t *testing.T) {
	cfg := testConfig()
	_, nc := setup(t, cfg)
	late := api.AdmitRequest{Conn: newConn("alice", "late", "gw"), Deadline: time.Now().Add(-time.Millisecond)}
	_, err := request[api.AdmitReply](t, nc, subject.PresenceAdmit, late)
	if natsx.CodeOf(err) != api.CodeTimeout {
		t.Fatalf("late admit: %v, want code 408", err)
	}
	if got := list(t, nc, "alice"); len(got) != 0 {
		t.Fatalf("alice holds %v", socketIDs(got))
	}
	if keys := kvKeys(t, openKV(t, nc, cfg.Bucket), "g.gw.>"); len(keys) != 0 {
		t.Fatalf("index keys left: %v", keys)
	}
	inTime := api.AdmitRequest{Conn: newConn("alice", "ok", "gw"), Deadline: time.Now().Add(time.Minute)}
	if _, err := request[api.AdmitReply](t, nc, subject.PresenceAdmit, inTime); err != nil {
		t.Fatal(err)
	}
}

// A gateway starting with the id of an earlier process gets that
// process's sockets released at once (not kept alive by its heartbeats).
func TestResetReleasesGatewaySockets(t *testing.T) {
	cfg := testConfig()
	_, nc := setup(t, cfg)
	mustAdmit(t, nc, newConn("alice", "a1", "fixed"))
	mustAdmit(t, nc, newConn("alice", "a2", "fixed"))
	mustAdmit(t, nc, newConn("alice", "a3", "other"))
	reply, err := request[api.ResetReply](t, nc, subject.PresenceReset, api.ResetRequest{Gateway: "fixed"})
	if err != nil || reply.Released != 2 {
		t.Fatalf("reset: %+v, %v", reply, err)
	}
	if got := socketIDs(list(t, nc, "alice")); !slices.Equal(got, []string{"a3"}) {
		t.Fatalf("alice holds %v", got)
	}
	if _, err := request[api.ResetReply](t, nc, subject.PresenceReset, api.ResetRequest{Gateway: ""}); natsx.CodeOf(err) != api.CodeBadRequest {
		t.Fatalf("reset of an invalid id: %v", err)
	}
}

// concurrentAdmits admits conn(i) for i < n at once, through conns in turn,
// and sorts the outcomes: socket ids admitted, refusals (too many), and
// other errors.
func concurrentAdmits(t *testing.T, conns []*nats.Conn, n int, conn func(i int) api.Conn) (admitted []string, refused int, other []error) {
	t.Helper()
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c := conn(i)
			_, err := admit(t, conns[i%len(conns)], c)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				admitted = append(admitted, c.SocketID)
			case natsx.CodeOf(err) == api.CodeTooMany:
				refused++
			default:
				other = append(other, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	return admitted, refused, other
}
