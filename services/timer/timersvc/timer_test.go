package timersvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

func TestParseDur(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args string // JSON array of the event's arguments
		want int
		msg  string
	}{
		{`[{"dur":1}]`, 1, ""},
		{`[{"dur":86400}]`, 86400, ""},
		{`[{"dur":3.0}]`, 3, ""},
		{`[{"dur":3e0}]`, 3, ""},
		{`[{"dur":0.3e1}]`, 3, ""},
		{`[{"dur":30E-1}]`, 3, ""},
		{`[{"dur":8.64e4}]`, 86400, ""},
		{`[{"dur":5,"other":true}]`, 5, ""},
		{`[{"dur":5}, "extra"]`, 5, ""},
		{`[]`, 0, msgStartUsage},
		{`[null]`, 0, msgStartUsage},
		{`[5]`, 0, msgStartUsage},
		{`["{\"dur\":5}"]`, 0, msgStartUsage},
		{`[[{"dur":5}]]`, 0, msgStartUsage},
		{`[{}]`, 0, msgDurMissing},
		{`[{"Dur":5}]`, 0, msgDurMissing},
		{`[{"dur":"3"}]`, 0, msgDurType},
		{`[{"dur":true}]`, 0, msgDurType},
		{`[{"dur":null}]`, 0, msgDurType},
		{`[{"dur":{}}]`, 0, msgDurType},
		{`[{"dur":[3]}]`, 0, msgDurType},
		{`[{"dur":3.5}]`, 0, msgDurWhole},
		{`[{"dur":0.5}]`, 0, msgDurWhole},
		{`[{"dur":1e-400}]`, 0, msgDurWhole},
		{`[{"dur":3.0000000000000000001}]`, 0, msgDurWhole},
		{`[{"dur":0}]`, 0, msgDurRange},
		{`[{"dur":-0}]`, 0, msgDurRange},
		{`[{"dur":0.0e5}]`, 0, msgDurRange},
		{`[{"dur":-1}]`, 0, msgDurRange},
		{`[{"dur":-3600}]`, 0, msgDurRange},
		{`[{"dur":86401}]`, 0, msgDurRange},
		{`[{"dur":1e400}]`, 0, msgDurRange},
		{`[{"dur":1e999999999999999999999}]`, 0, msgDurRange},
		{`[{"dur":99999999999999999999}]`, 0, msgDurRange},
		{`[{"dur":9223372036854775808}]`, 0, msgDurRange},
		{`[{"dur":1e5}]`, 0, msgDurRange},
	}
	for _, tc := range tests {
		var args []json.RawMessage
		if err := json.Unmarshal([]byte(tc.args), &args); err != nil {
			t.Fatalf("%s: %v", tc.args, err)
		}
		got, msg := parseStart(args)
		if got != tc.want || msg != tc.msg {
			t.Errorf("parseStart(%s) = %d, %q; want %d, %q", tc.args, got, msg, tc.want, tc.msg)
		}
	}
}

func TestUserKey(t *testing.T) {
	t.Parallel()
	for _, uid := range []string{"alice", "a.b", "user@example.com", "~x", "=x", "*", ">", "a b", strings.Repeat("x", 200), "ünïcode"} {
		key, err := userKey(uid, 64)
		if err != nil {
			t.Fatalf("userKey(%q): %v", uid, err)
		}
		if want := fmt.Sprintf("t.%d.", PartitionOf(uid, 64)); !strings.HasPrefix(key, want) {
			t.Errorf("userKey(%q) = %q, want prefix %q", uid, key, want)
		}
		if strings.Count(key, ".") != 2 || strings.ContainsAny(key, "*> ~") {
			t.Errorf("userKey(%q) = %q: not one safe token", uid, key)
		}
		back, err := uidFromKey(key)
		if err != nil || back != uid {
			t.Errorf("uidFromKey(%q) = %q, %v; want %q", key, back, err, uid)
		}
	}
	if _, err := userKey("", 64); err == nil {
		t.Error("empty uid accepted")
	}
	for _, key := range []string{"lease.1", "t.", "t.1", "t.1.", "t.1.~YWxpY2U", "u.alice", "t.1.a.b"} {
		if uid, err := uidFromKey(key); err == nil {
			t.Errorf("uidFromKey(%q) = %q, want error", key, uid)
		}
	}
}

func TestConfigRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tests := map[string]func(*Config){
		"no timers":      func(c *Config) { c.MaxTimersPerUser = 0 },
		"bad bucket":     func(c *Config) { c.Bucket = "a.b" },
		"no bucket":      func(c *Config) { c.Bucket = "" },
		"replicas":       func(c *Config) { c.Replicas = 0 },
		"short lease":    func(c *Config) { c.LeaseTTL = 2 * c.LeaseRenew },
		"fast renew":     func(c *Config) { c.LeaseRenew = time.Millisecond },
		"partitions":     func(c *Config) { c.Partitions = 0 },
		"many parts":     func(c *Config) { c.Partitions = MaxPartitions + 1 },
		"bad stream":     func(c *Config) { c.EventsStream = "a b" },
		"short dedup":    func(c *Config) { c.DedupWindow = time.Second },
		"long instance":  func(c *Config) { c.Instance = strings.Repeat("i", 129) },
		"negative batch": func(c *Config) { c.TickBatch = -time.Millisecond },
		"long batch":     func(c *Config) { c.TickBatch = MaxTickBatch + time.Millisecond },
	}
	for name, mod := range tests {
		cfg := DefaultConfig()
		mod(&cfg)
		if svc, err := Start(context.Background(), testLog(t), e.nc, cfg); err == nil {
			_ = svc.Stop()
			t.Errorf("%s: started", name)
		}
	}
}

// Ticks dur..0 one second apart on the deadline grid, 0 exactly once, then
// timerDone, and the timer is gone.
func TestCountdown(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	svc := e.startLeader(t, testConfig())
	w := who{"alice", "phone", "s1"}
	in := e.listenDevice(t, w.uid, w.dev)
	e.startTimer(t, w, 3)
	deadline := e.deadline(t, w)
	countdown(t, in, deadline, 3, 3, w.dev)
	in.none(t, 1200*time.Millisecond)
	// Operators see the ticks sent (3, 2, 1: the 0 goes through the
	// stream) and how late they left, all within the tick batch here.
	status := svc.Status()
	var sum uint64
	for _, n := range status.TickLateness {
		sum += n
	}
	if status.Ticks != 3 || sum != 3 || len(status.TickLateness) != len(api.TickLatenessBounds)+1 || status.TickLateness[len(status.TickLateness)-1] != 0 {
		t.Fatalf("tick stats %d %v", status.Ticks, status.TickLateness)
	}
	if got := e.timers(t, w); len(got) != 0 {
		t.Fatalf("timers after done: %+v", got)
	}
	key, _ := userKey(w.uid, testConfig().Partitions)
	js, _ := jetstream.New(e.nc)
	kv, err := js.KeyValue(context.Background(), DefaultConfig().Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(context.Background(), key); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("user key after done: %v, want not found", err)
	}
	// The removal leaves a marker that expires, not one per user forever.
	st, err := kv.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.LimitMarkerTTL() != natsx.MarkerTTL {
		t.Fatalf("bucket marker TTL %s, want %s", st.LimitMarkerTTL(), natsx.MarkerTTL)
	}
	stream, err := js.Stream(context.Background(), "KV_"+DefaultConfig().Bucket)
	if err != nil {
		t.Fatal(err)
	}
	marker, err := stream.GetLastMsgForSubject(context.Background(), "$KV."+DefaultConfig().Bucket+"."+key)
	if err != nil {
		t.Fatal(err)
	}
	if ttl := marker.Header.Get(jetstream.MsgTTLHeader); ttl == "" || marker.Header.Get("KV-Operation") != "PURGE" {
		t.Fatalf("marker headers %v: want a purge with a TTL", marker.Header)
	}
}

func TestStopStopsTicks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startLeader(t, testConfig())
	w := who{"alice", "phone", "s1"}
	in := e.listenDevice(t, w.uid, w.dev)
	e.ok(t, api.EventTimerStop, w, `[]`, nil) // nothing to stop: still ok
	e.startTimer(t, w, 3)
	if got := in.expect(t, api.EventTick, time.Second).timer(t); got != 3 {
		t.Fatalf("first tick %d, want 3", got)
	}
	e.ok(t, api.EventTimerStop, w, `[]`, nil)
	in.none(t, 1500*time.Millisecond)
	e.ok(t, api.EventTimerStop, w, `[]`, nil) // idempotent
	if got := e.timers(t, w); len(got) != 0 {
		t.Fatalf("timers after stop: %+v", got)
	}
	// Without ack: stops as well, and says nothing.
	conn := e.listenConn(t, w.sock)
	e.startTimer(t, w, 3)
	in.expect(t, api.EventTick, time.Second)
	e.send(t, api.EventTimerStop, w, ``)
	in.none(t, 1500*time.Millisecond)
	conn.none(t, 0)
}

func TestReplaceRestarts(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startLeader(t, testConfig())
	w := who{"alice", "phone", "s1"}
	in := e.listenDevice(t, w.uid, w.dev)
	e.startTimer(t, w, 3)
	first := e.deadline(t, w)
	onGrid(t, in.next(t, time.Second), first, 3)
	onGrid(t, in.next(t, 2*time.Second), first, 2)
	e.startTimer(t, w, 2) // replaces, without a new ack being needed
	second := e.deadline(t, w)
	if !second.After(first.Add(-time.Second)) || second.Equal(first) {
		t.Fatalf("replaced deadline %s, first %s", second, first)
	}
	countdown(t, in, second, 2, 2, w.dev)
	in.none(t, 1200*time.Millisecond)
}

func TestDevicesAndUsersSeparate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startLeader(t, testConfig())
	a := who{"alice", "phone", "s1"}
	b := who{"alice", "tablet", "s2"}
	idle := e.listenDevice(t, "alice", "laptop")
	bob := e.listenDevice(t, "bob", "phone")
	bobAll := e.listen(t, "sb.out.user.bob")
	ina := e.listenDevice(t, a.uid, a.dev)
	inb := e.listenDevice(t, b.uid, b.dev)
	e.startTimer(t, a, 2)
	e.startTimer(t, b, 3)
	da, db := e.deadline(t, a), e.deadline(t, b)
	done := make(chan struct{})
	go func() {
		defer close(done)
		countdown(t, ina, da, 2, 2, a.dev)
	}()
	countdown(t, inb, db, 3, 3, b.dev)
	<-done
	ina.none(t, 0)
	idle.none(t, 0)
	bob.none(t, 0)
	bobAll.none(t, 0)
}

// An odd user id and device id are encoded into the subjects and the KV key.
func TestEncodedIDs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startLeader(t, testConfig())
	w := who{"alice@example.com", "dev:1.x", "s1"}
	subj, err := subject.OutDevice(w.uid, w.dev)
	if err != nil || strings.Count(subj, ".") != 4 || !strings.HasPrefix(subj, "sb.out.device.~") {
		t.Fatalf("subject %q, %v", subj, err)
	}
	in := e.listen(t, subj)
	e.startTimer(t, w, 1)
	countdown(t, in, e.deadline(t, w), 1, 1, w.dev)
}

func TestInvalidStartRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startLeader(t, testConfig())
	w := who{"alice", "phone", "s1"}
	in := e.listenDevice(t, w.uid, w.dev)
	conn := e.listenConn(t, w.sock)
	e.startTimer(t, w, 3)
	deadline := e.deadline(t, w)
	onGrid(t, in.next(t, time.Second), deadline, 3)

	tests := []struct{ name, body, msg string }{
		{"no args", `[]`, msgStartUsage},
		{"empty body", ``, msgStartUsage},
		{"not object", `[3]`, msgStartUsage},
		{"string arg", `["dur"]`, msgStartUsage},
		{"null arg", `[null]`, msgStartUsage},
		{"missing", `[{}]`, msgDurMissing},
		{"negative", `[{"dur":-5}]`, msgDurRange},
		{"zero", `[{"dur":0}]`, msgDurRange},
		{"fraction", `[{"dur":3.5}]`, msgDurWhole},
		{"string", `[{"dur":"3"}]`, msgDurType},
		{"boolean", `[{"dur":true}]`, msgDurType},
		{"null", `[{"dur":null}]`, msgDurType},
		{"too long", `[{"dur":86401}]`, msgDurRange},
		{"1e400", `[{"dur":1e400}]`, msgDurRange},
		{"huge", `[{"dur":99999999999999999999}]`, msgDurRange},
		{"not json", `hello`, "invalid event arguments"},
		{"not array", `{"dur":3}`, "invalid event arguments"},
	}
	for _, tc := range tests {
		_, se := e.request(t, api.EventTimerStart, w, tc.body)
		if se == nil || se.Code != api.CodeBadRequest || se.Message != tc.msg {
			t.Errorf("%s with ack: error %v, want 400 %q", tc.name, se, tc.msg)
		}
		e.send(t, api.EventTimerStart, w, tc.body)
		d := conn.expect(t, api.EventException, time.Second)
		var st api.Status
		if err := json.Unmarshal(d.data, &st); err != nil || st != api.ErrorStatus(tc.msg) {
			t.Errorf("%s without ack: exception %s, want message %q", tc.name, d.data, tc.msg)
		}
	}
	// Missing identity headers.
	if _, se := e.request(t, api.EventTimerStart, who{uid: "alice"}, `[{"dur":3}]`); se == nil || se.Code != api.CodeBadRequest {
		t.Errorf("no device: %v, want 400", se)
	}
	// The running timer kept its deadline and keeps ticking on its grid.
	if got := e.deadline(t, w); !got.Equal(deadline) {
		t.Fatalf("deadline moved from %s to %s", deadline, got)
	}
	for {
		d := in.next(t, 2*time.Second)
		if d.event == api.EventTimerDone {
			break
		}
		r := d.timer(t)
		onGrid(t, d, deadline, r)
		if r == 3 {
			t.Fatal("timer restarted")
		}
	}
	conn.none(t, 0)
}

func TestCapPerUser(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig()
	cfg.MaxTimersPerUser = 2
	e.startLeader(t, cfg)
	d1, d2, d3 := who{"alice", "d1", "s1"}, who{"alice", "d2", "s2"}, who{"alice", "d3", "s3"}
	e.startTimer(t, d1, 60)
	e.startTimer(t, d2, 60)
	_, se := e.request(t, api.EventTimerStart, d3, `[{"dur":60}]`)
	if se == nil || se.Code != api.CodeTooMany || se.Message != "Too many timers" {
		t.Fatalf("third timer: %v, want 429 Too many timers", se)
	}
	conn := e.listenConn(t, d3.sock)
	e.send(t, api.EventTimerStart, d3, `[{"dur":60}]`)
	if d := conn.expect(t, api.EventException, time.Second); !strings.Contains(string(d.data), "Too many timers") {
		t.Fatalf("exception %s", d.data)
	}
	e.startTimer(t, d1, 30)                     // replacing is not a new timer
	e.startTimer(t, who{"bob", "d3", "s9"}, 60) // other users are not affected
	e.ok(t, api.EventTimerStop, d2, `[]`, nil)
	e.startTimer(t, d3, 60)
	got := e.timers(t, d1)
	if len(got) != 2 || got[0].DeviceID != "d1" || got[0].Dur != 30 || got[1].DeviceID != "d3" {
		t.Fatalf("timers %+v", got)
	}
}

// Concurrent starts on many instances never exceed the cap.
func TestCapConcurrent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := testConfig()
	cfg.MaxTimersPerUser = 3
	for range 3 {
		e.start(t, cfg)
	}
	res := make(chan *natsx.Error, 12)
	for i := range 12 {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			m := e.eventMsg(t, api.EventTimerStart, who{"carol", "dev" + string(rune('a'+i)), "s"}, `[{"dur":60}]`)
			reply, err := e.nc.RequestMsgWithContext(ctx, m)
			if err != nil {
				res <- &natsx.Error{Code: 0, Message: err.Error()}
				return
			}
			res <- natsx.ErrorFromMsg(reply)
		}()
	}
	ok, refused := 0, 0
	for range 12 {
		switch se := <-res; {
		case se == nil:
			ok++
		case se.Code == api.CodeTooMany:
			refused++
		default:
			t.Errorf("unexpected error %v", se)
		}
	}
	if ok != 3 || refused != 9 {
		t.Fatalf("%d started, %d refused; want 3 and 9", ok, refused)
	}
	if got := e.timers(t, who{"carol", "x", "s"}); len(got) != 3 {
		t.Fatalf("timers %+v", got)
	}
}

func TestList(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startLeader(t, testConfig())
	a, b := who{"alice", "tablet", "s1"}, who{"alice", "phone", "s2"}
	if got := e.timers(t, a); got == nil || len(got) != 0 {
		t.Fatalf("no timers: %#v, want empty list", got)
	}
	e.startTimer(t, a, 100)
	e.startTimer(t, b, 200)
	args, se := e.request(t, api.EventTimerList, a, `[]`)
	if se != nil || len(args) != 1 {
		t.Fatalf("timerList: %v %s", se, args)
	}
	var raw struct {
		Status string           `json:"status"`
		Timers []map[string]any `json:"timers"`
	}
	if err := json.Unmarshal(args[0], &raw); err != nil {
		t.Fatal(err)
	}
	if raw.Status != "ok" || len(raw.Timers) != 2 {
		t.Fatalf("timerList ack %s", args[0])
	}
	for _, k := range []string{"deviceId", "dur", "remaining", "deadline"} {
		if _, ok := raw.Timers[0][k]; !ok {
			t.Fatalf("timer lacks %q: %s", k, args[0])
		}
	}
	if _, err := time.Parse(time.RFC3339, raw.Timers[0]["deadline"].(string)); err != nil {
		t.Fatalf("deadline not ISO-8601: %v", err)
	}
	got := e.timers(t, a)
	if got[0].DeviceID != "phone" || got[0].Dur != 200 || got[0].Remaining != 200 ||
		got[1].DeviceID != "tablet" || got[1].Dur != 100 || got[1].Remaining < 99 {
		t.Fatalf("timers %+v", got)
	}
	if d := time.Until(got[0].Deadline); d < 199*time.Second || d > 200*time.Second {
		t.Fatalf("deadline in %s, want ~200s", d)
	}

	// The micro endpoint for backend services gives the same list.
	ctx := context.Background()
	reply, err := natsx.Request[api.TimerListReply](ctx, e.nc, subject.TimerListAPI, api.TimerListRequest{UserID: "alice"})
	if err != nil || len(reply.Timers) != 2 || reply.Timers[0] != got[0] {
		t.Fatalf("sb.timer.list: %+v, %v", reply, err)
	}
	reply, err = natsx.Request[api.TimerListReply](ctx, e.nc, subject.TimerListAPI, api.TimerListRequest{UserID: "nobody"})
	if err != nil || reply.Timers == nil || len(reply.Timers) != 0 {
		t.Fatalf("sb.timer.list of nobody: %+v, %v", reply, err)
	}
	for _, body := range []any{api.TimerListRequest{}, "junk", map[string]any{"userId": 5}} {
		if _, err := natsx.Request[api.TimerListReply](ctx, e.nc, subject.TimerListAPI, body); natsx.CodeOf(err) != api.CodeBadRequest {
			t.Fatalf("sb.timer.list %v: %v, want 400", body, err)
		}
	}
	// Discoverable as a micro service.
	info, err := e.nc.Request("$SRV.INFO."+ServiceName, nil, time.Second)
	if err != nil || !strings.Contains(string(info.Data), subject.TimerListAPI) {
		t.Fatalf("service info: %v %s", err, info.Data)
	}

	// Without ack there is nothing to answer: no reply, no exception.
	conn := e.listenConn(t, a.sock)
	e.send(t, api.EventTimerList, a, `[]`)
	conn.none(t, 300*time.Millisecond)
}

// A device that connects while its timer runs gets the current tick on its
// new connection at once.
func TestConnectedGetsCurrentTick(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startLeader(t, testConfig())
	w := who{"alice", "phone", "s1"}
	e.startTimer(t, w, 5)
	deadline := e.deadline(t, w)
	newConn := e.listenConn(t, "s-new")
	otherConn := e.listenConn(t, "s-other")
	time.Sleep(time.Until(deadline.Add(-3500 * time.Millisecond))) // 3.5 s left
	publish := func(c api.Conn) {
		data, _ := json.Marshal(api.LifecycleEvent{Conn: c})
		if err := e.nc.Publish(subject.EventConnected, data); err != nil {
			t.Fatal(err)
		}
	}
	publish(api.Conn{SocketID: "s-new", UserID: "alice", DeviceID: "phone"})
	publish(api.Conn{SocketID: "s-other", UserID: "alice", DeviceID: "laptop"})
	publish(api.Conn{SocketID: "s-other", UserID: "bob", DeviceID: "phone"})
	if err := e.nc.Publish(subject.EventConnected, []byte("junk")); err != nil {
		t.Fatal(err)
	}
	d := newConn.expect(t, api.EventTick, time.Second)
	if got := d.timer(t); got != 4 {
		t.Fatalf("current tick %d, want 4", got)
	}
	if d.at.After(deadline.Add(-3 * time.Second)) {
		t.Fatalf("current tick came late")
	}
	newConn.none(t, 300*time.Millisecond)
	otherConn.none(t, 0)
}

// A decision not to write rests on one read of the leader's value: after a
// direct read it is read again; without a direct read, once.
func TestMutateReadsForNoWrite(t *testing.T) {
	for _, direct := range []bool{true, false} {
		t.Run(fmt.Sprint(direct), func(t *testing.T) {
			var leader, replica int
			s := &store{log: testLog(t), partitions: 8,
				last: func(context.Context, string) (*jetstream.RawStreamMsg, error) {
					leader++
					return nil, jetstream.ErrMsgNotFound
				}}
			if direct {
				s.lastDirect = func(context.Context, string) (*jetstream.RawStreamMsg, error) {
					replica++
					return nil, jetstream.ErrMsgNotFound
				}
			}
			calls := 0
			err := s.mutate(context.Background(), "k", func(*userDoc, int64) (bool, error) { calls++; return false, nil })
			if err != nil {
				t.Fatal(err)
			}
			wantReplica, wantCalls := 0, 1
			if direct {
				wantReplica, wantCalls = 1, 2
			}
			if leader != 1 || replica != wantReplica || calls != wantCalls {
				t.Fatalf("leader reads %d, direct reads %d, decisions %d; want 1, %d, %d", leader, replica, calls, wantReplica, wantCalls)
			}
		})
	}
}
