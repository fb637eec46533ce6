package presencesvc

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// wantConnections asserts m is a `connections` delivery with exactly body.
func wantConnections(t *testing.T, m *nats.Msg, body string) {
	t.Helper()
	if ev := m.Header.Get(api.HeaderEvent); ev != "connections" {
		t.Fatalf("event %q on %s, want connections", ev, m.Subject)
	}
	if string(m.Data) != body {
		t.Fatalf("connections on %s:\n got %s\nwant %s", m.Subject, m.Data, body)
	}
}

// publicJSON is the exact client-facing element for newConn(uid, sid, _).
func publicJSON(uid, sid string) string {
	return fmt.Sprintf(`{"socketId":%q,"userId":%q,"deviceId":"dev-%s","ip":"10.0.0.1","userAgent":"test-agent","createdAt":"2024-05-06T06:08:09.123Z"}`, sid, uid, sid)
}

func arr(elems ...string) string { return "[" + strings.Join(elems, ",") + "]" }

func TestConnectionsEvents(t *testing.T) {
	_, nc := setup(t, testConfig())
	s1, s2, s3 := connSub(t, nc, "a1"), connSub(t, nc, "a2"), connSub(t, nc, "a3")
	bob := connSub(t, nc, "b1")
	connected := chanSub(t, nc, subject.EventConnected)
	disconnected := chanSub(t, nc, subject.EventDisconnected)
	a1, a2, a3 := publicJSON("alice", "a1"), publicJSON("alice", "a2"), publicJSON("alice", "a3")

	mustAdmit(t, nc, newConn("alice", "a1", "gw1"))
	wantConnections(t, next(t, s1), `[]`)

	mustAdmit(t, nc, newConn("alice", "a2", "gw2"))
	wantConnections(t, next(t, s1), arr(a2))
	wantConnections(t, next(t, s2), arr(a1))

	mustAdmit(t, nc, newConn("bob", "b1", "gw1"))
	wantConnections(t, next(t, bob), `[]`)

	mustAdmit(t, nc, newConn("alice", "a3", "gw1"))
	wantConnections(t, next(t, s1), arr(a2, a3))
	wantConnections(t, next(t, s2), arr(a1, a3))
	wantConnections(t, next(t, s3), arr(a1, a2))

	// Refused and repeated admits change nothing and send nothing.
	if _, err := admit(t, nc, newConn("alice", "a4", "gw1")); err == nil {
		t.Fatal("fourth admit accepted")
	}
	mustAdmit(t, nc, newConn("alice", "a3", "gw1"))

	release(t, nc, "alice", "a2")
	wantConnections(t, next(t, s1), arr(a3))
	wantConnections(t, next(t, s3), arr(a1))

	release(t, nc, "alice", "a2") // idempotent: no update
	release(t, nc, "alice", "a1")
	wantConnections(t, next(t, s3), `[]`)

	// Exactly one update per change, none to sockets that left or to
	// another user.
	for _, ch := range []chan *nats.Msg{s1, s2, s3, bob} {
		none(t, ch)
	}

	// Lifecycle events carry the full connection, gateway included.
	for _, want := range []string{"a1", "a2", "b1", "a3"} {
		var ev api.LifecycleEvent
		if err := json.Unmarshal(next(t, connected).Data, &ev); err != nil || ev.Conn.SocketID != want || ev.Conn.Gateway == "" {
			t.Fatalf("connected event %+v (%v), want %s with gateway", ev, err, want)
		}
	}
	for _, want := range []string{"a2", "a1"} {
		var ev api.LifecycleEvent
		if err := json.Unmarshal(next(t, disconnected).Data, &ev); err != nil || ev.Conn.SocketID != want {
			t.Fatalf("disconnected event %+v (%v), want %s", ev, err, want)
		}
	}
	none(t, connected)
	none(t, disconnected)
}

func TestConnectionsEventsCanBeSwitchedOff(t *testing.T) {
	cfg := testConfig()
	cfg.ConnectionsEvents = false
	_, nc := setup(t, cfg)
	out := connSub(t, nc, "a1")
	connected := chanSub(t, nc, subject.EventConnected)
	disconnected := chanSub(t, nc, subject.EventDisconnected)
	mustAdmit(t, nc, newConn("alice", "a1", "gw"))
	mustAdmit(t, nc, newConn("alice", "a2", "gw"))
	release(t, nc, "alice", "a2")
	next(t, connected)
	next(t, connected)
	next(t, disconnected) // lifecycle events are always published
	none(t, out)
}

// clientEvent sends a disconnectRequest as a gateway would.
func clientEvent(t *testing.T, nc *nats.Conn, uid, sid string, body []byte, ack bool) *nats.Msg {
	t.Helper()
	subj, err := subject.In(api.EventDisconnectRequest)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(subj)
	m.Header.Set(api.HeaderEvent, api.EventDisconnectRequest)
	m.Header.Set(api.HeaderUser, uid)
	m.Header.Set(api.HeaderSocket, sid)
	m.Header.Set(api.HeaderDevice, "dev-"+sid)
	m.Header.Set(api.HeaderNamespace, "/")
	m.Header.Set(api.HeaderGateway, "gw1")
	m.Data = body
	if !ack {
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
		return nil
	}
	reply, err := nc.RequestMsg(m, wait)
	if err != nil {
		t.Fatalf("disconnectRequest: %v", err)
	}
	return reply
}

func controlSub(t *testing.T, nc *nats.Conn, gw string) chan *nats.Msg {
	t.Helper()
	subj, err := subject.GatewayControl(gw, subject.OpDisconnect)
	if err != nil {
		t.Fatal(err)
	}
	return chanSub(t, nc, subj)
}

func TestDisconnectRequest(t *testing.T) {
	_, nc := setup(t, testConfig())
	gw1, gw2 := controlSub(t, nc, "gw1"), controlSub(t, nc, "gw.2")
	exc := connSub(t, nc, "a1")
	mustAdmit(t, nc, newConn("alice", "a1", "gw1"))
	mustAdmit(t, nc, newConn("alice", "a2", "gw.2"))
	mustAdmit(t, nc, newConn("bob", "b1", "gw1"))
	next(t, exc) // the connections updates of the admits above
	next(t, exc)

	const notYours = "Socket not found or not yours"
	const badArgs = "disconnectRequest expects a socket id string"
	cases := []struct {
		name    string
		body    string
		code    int    // 0: success
		msg     string // error message
		control chan *nats.Msg
		target  string
	}{
		{"own other socket", `["a2"]`, 0, "", gw2, "a2"},
		{"own current socket", `["a1"]`, 0, "", gw1, "a1"},
		{"extra args ignored", `["a2",{"x":1}]`, 0, "", gw2, "a2"},
		{"other user's socket", `["b1"]`, api.CodeForbidden, notYours, nil, ""},
		{"unknown socket", `["zz"]`, api.CodeForbidden, notYours, nil, ""},
		{"number", `[42]`, api.CodeBadRequest, badArgs, nil, ""},
		{"missing", `[]`, api.CodeBadRequest, badArgs, nil, ""},
		{"empty body", ``, api.CodeBadRequest, badArgs, nil, ""},
		{"object", `[{"socketId":"a2"}]`, api.CodeBadRequest, badArgs, nil, ""},
		{"null", `[null]`, api.CodeBadRequest, badArgs, nil, ""},
		{"empty string", `[""]`, api.CodeBadRequest, badArgs, nil, ""},
		{"array in array", `[["a2"]]`, api.CodeBadRequest, badArgs, nil, ""},
		{"body not an array", `"a2"`, api.CodeBadRequest, badArgs, nil, ""},
		{"body not json", `a2`, api.CodeBadRequest, badArgs, nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name+"/ack", func(t *testing.T) {
			reply := clientEvent(t, nc, "alice", "a1", []byte(tc.body), true)
			if tc.code == 0 {
				if string(reply.Data) != `[{"status":"ok"}]` || reply.Header.Get("Nats-Service-Error-Code") != "" {
					t.Fatalf("ack %q %v", reply.Data, reply.Header)
				}
				var order api.DisconnectOrder
				if err := json.Unmarshal(next(t, tc.control).Data, &order); err != nil ||
					order != (api.DisconnectOrder{SocketID: tc.target, Reason: "disconnectRequest"}) {
					t.Fatalf("order %+v (%v)", order, err)
				}
			} else {
				if got := reply.Header.Get("Nats-Service-Error-Code"); got != fmt.Sprint(tc.code) {
					t.Fatalf("error code %q, want %d", got, tc.code)
				}
				if got := reply.Header.Get("Nats-Service-Error"); got != tc.msg {
					t.Fatalf("error %q, want %q", got, tc.msg)
				}
			}
			none(t, gw1)
			none(t, gw2)
		})
		if tc.code != 0 {
			t.Run(tc.name+"/no ack", func(t *testing.T) {
				clientEvent(t, nc, "alice", "a1", []byte(tc.body), false)
				m := next(t, exc)
				if m.Header.Get(api.HeaderEvent) != "exception" {
					t.Fatalf("event %q", m.Header.Get(api.HeaderEvent))
				}
				want := fmt.Sprintf(`{"status":"error","message":%q}`, tc.msg)
				if string(m.Data) != want {
					t.Fatalf("exception %s, want %s", m.Data, want)
				}
				none(t, gw1)
				none(t, gw2)
			})
		}
	}
	// A request without a user (not from a gateway) is refused too.
	reply := clientEvent(t, nc, "", "a1", []byte(`["a1"]`), true)
	if reply.Header.Get("Nats-Service-Error-Code") != "403" {
		t.Fatalf("no user: %v %q", reply.Header, reply.Data)
	}
	// Presence only orders; the sockets stay until the gateway releases them.
	if got := socketIDs(list(t, nc, "alice")); len(got) != 2 {
		t.Fatalf("alice holds %v", got)
	}
	none(t, gw1)
}

// When two instances change one user at the same time, their updates may
// cross on the way; each carries the revision it lists, and the newest
// update each socket gets (the one the gateway keeps) is the user's final
// state.
func TestConnectionsNewestAcrossInstances(t *testing.T) {
	cfg := testConfig()
	cfg.MaxConnectionsPerUser = 16
	srv, nc1 := setup(t, cfg)
	nc2 := srv.Conn(t)
	startSvc(t, nc2, cfg)
	obs := srv.Conn(t)
	var sids []string
	for i := range 16 {
		sids = append(sids, fmt.Sprintf("s%02d", i))
	}
	subs := map[string]chan *nats.Msg{}
	for _, sid := range sids {
		subs[sid] = connSub(t, obs, sid)
	}
	run := func(f func(i int, sid string)) {
		var wg sync.WaitGroup
		for i, sid := range sids {
			wg.Go(func() { f(i, sid) })
		}
		wg.Wait()
	}
	ncs := []*nats.Conn{nc1, nc2}
	run(func(i int, sid string) { mustAdmit(t, ncs[i%2], newConn("alice", sid, "gw")) })
	run(func(i int, sid string) {
		if i%2 == 1 {
			release(t, ncs[i/2%2], "alice", sid)
		}
	})
	if err := obs.Flush(); err != nil {
		t.Fatal(err)
	}
	final := list(t, nc1, "alice")
	if got := slices.Sorted(slices.Values(socketIDs(final))); len(got) != 8 || got[0] != "s00" || got[7] != "s14" {
		t.Fatalf("final %v", got)
	}
	for _, c := range final {
		var last []byte
		var newest uint64
		for len(subs[c.SocketID]) > 0 {
			m := <-subs[c.SocketID]
			rev, err := strconv.ParseUint(m.Header.Get(api.HeaderRevision), 10, 64)
			if err != nil || rev == 0 {
				t.Fatalf("%s: update without a revision: %q", c.SocketID, m.Header.Get(api.HeaderRevision))
			}
			if rev > newest {
				newest, last = rev, m.Data
			}
		}
		var others []string
		for _, o := range final {
			if o.SocketID != c.SocketID {
				others = append(others, publicJSON("alice", o.SocketID))
			}
		}
		if string(last) != arr(others...) {
			t.Errorf("%s: last update %s, want %s", c.SocketID, last, arr(others...))
		}
	}
}
