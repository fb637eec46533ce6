package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/client"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

func conns(t *testing.T) (pub, sub *nats.Conn) {
	t.Helper()
	s := natstest.Run(t)
	return s.Conn(t), s.Conn(t)
}

func subscribe(t *testing.T, nc *nats.Conn, subj string) *nats.Subscription {
	t.Helper()
	sub, err := nc.SubscribeSync(subj)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return sub
}

func nextMsg(t *testing.T, sub *nats.Subscription) *nats.Msg {
	t.Helper()
	m, err := sub.NextMsg(2 * time.Second)
	if err != nil {
		t.Fatalf("no message on %s: %v", sub.Subject, err)
	}
	return m
}

func noMsg(t *testing.T, sub *nats.Subscription) {
	t.Helper()
	if m, err := sub.NextMsg(50 * time.Millisecond); err == nil {
		t.Fatalf("unexpected message on %s: %q", m.Subject, m.Data)
	}
}

func TestNotifySubjects(t *testing.T) {
	pub, sub := conns(t)
	all := subscribe(t, sub, "sb.out.>")
	c := client.New(pub)

	type payload struct {
		Text string `json:"text"`
	}
	tests := []struct {
		name    string
		send    func() error
		subject string
		event   string
		body    string
	}{
		{"user", func() error { return c.NotifyUser("alice", "greeting", "hello") }, "sb.out.user.alice", "greeting", `"hello"`},
		{"user encoded", func() error { return c.NotifyUser("a.b", "greeting", payload{"hi"}) }, "sb.out.user.~YS5i", "greeting", `{"text":"hi"}`},
		{"user wildcard id", func() error { return c.NotifyUser(">", "x", 1) }, "sb.out.user.~Pg", "x", `1`},
		{"device", func() error { return c.NotifyDevice("alice", "phone-1", "tick", map[string]int{"timer": 3}) }, "sb.out.device.alice.phone-1", "tick", `{"timer":3}`},
		{"device encoded", func() error { return c.NotifyDevice("a.b", "dev:1", "tick", nil) }, "sb.out.device.~YS5i.~ZGV2OjE", "tick", ``},
		{"conn", func() error { return c.NotifyConn("sock_1", "hello", json.RawMessage(`[1,2]`)) }, "sb.out.conn.sock_1", "hello", `[1,2]`},
		{"conn raw bytes", func() error { return c.NotifyConn("sock_1", "hello", []byte(`{"a":1}`)) }, "sb.out.conn.sock_1", "hello", `{"a":1}`},
		{"broadcast", func() error { return c.Broadcast("news", "hi all") }, "sb.out.all", "news", `"hi all"`},
		{"unicode event", func() error { return c.Broadcast("ünï", true) }, "sb.out.all", "ünï", `true`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.send(); err != nil {
				t.Fatal(err)
			}
			m := nextMsg(t, all)
			if m.Subject != tt.subject {
				t.Errorf("subject = %q, want %q", m.Subject, tt.subject)
			}
			if got := m.Header.Get(api.HeaderEvent); got != tt.event {
				t.Errorf("Sb-Event = %q, want %q", got, tt.event)
			}
			if string(m.Data) != tt.body {
				t.Errorf("body = %q, want %q", m.Data, tt.body)
			}
		})
	}
}

func TestNotifyRefuses(t *testing.T) {
	pub, sub := conns(t)
	all := subscribe(t, sub, "sb.out.>")
	c := client.New(pub)
	for _, ev := range []string{"", "connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"} {
		for name, send := range map[string]func() error{
			"user":      func() error { return c.NotifyUser("alice", ev, 1) },
			"device":    func() error { return c.NotifyDevice("alice", "d", ev, 1) },
			"conn":      func() error { return c.NotifyConn("s", ev, 1) },
			"broadcast": func() error { return c.Broadcast(ev, 1) },
		} {
			if err := send(); !errors.Is(err, client.ErrEventName) {
				t.Errorf("%s event %q: err = %v, want ErrEventName", name, ev, err)
			}
		}
	}
	if err := c.NotifyUser("", "x", 1); !errors.Is(err, subject.ErrInvalidID) {
		t.Errorf("empty user id: %v, want ErrInvalidID", err)
	}
	if err := c.NotifyDevice("u", strings.Repeat("d", subject.MaxIDLen+1), "x", 1); !errors.Is(err, subject.ErrInvalidID) {
		t.Errorf("long device id: %v, want ErrInvalidID", err)
	}
	if err := c.NotifyConn("", "x", 1); !errors.Is(err, subject.ErrInvalidID) {
		t.Errorf("empty socket id: %v, want ErrInvalidID", err)
	}
	if err := c.NotifyUser("u", "x", make(chan int)); err == nil {
		t.Error("unencodable payload accepted")
	}
	noMsg(t, all)
}

// inMsg builds a client event as the gateway publishes it.
func inMsg(t *testing.T, event, body string) *nats.Msg {
	t.Helper()
	subj, err := subject.In(event)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(subj)
	m.Header.Set(api.HeaderEvent, event)
	m.Header.Set(api.HeaderUser, "alice")
	m.Header.Set(api.HeaderDevice, "phone")
	m.Header.Set(api.HeaderSocket, "sock_1")
	m.Header.Set(api.HeaderNamespace, "/")
	m.Header.Set(api.HeaderGateway, "gw1")
	m.Data = []byte(body)
	return m
}

func TestParseEvent(t *testing.T) {
	pub, _ := conns(t)
	e, err := client.ParseEvent(pub, inMsg(t, "chat.send", `[{"text":"hi"},2]`))
	if err != nil {
		t.Fatal(err)
	}
	if e.Name != "chat.send" || e.UserID != "alice" || e.DeviceID != "phone" || e.SocketID != "sock_1" || e.Namespace != "/" {
		t.Errorf("event = %+v", e)
	}
	if len(e.Args) != 2 || string(e.Args[0]) != `{"text":"hi"}` || string(e.Args[1]) != `2` {
		t.Errorf("args = %q", e.Args)
	}
	if e.WantsAck() {
		t.Error("WantsAck without a reply subject")
	}
	if err := e.Ack("ignored"); err != nil {
		t.Errorf("Ack without reply: %v", err)
	}

	if e.Claims != nil {
		t.Errorf("claims without the header: %s", e.Claims)
	}
	if ok, err := e.Claim("role", new(string)); ok || err != nil {
		t.Errorf("Claim without claims = %v, %v", ok, err)
	}
	m := inMsg(t, "ping", "")
	m.Header.Set(api.HeaderClaims, `{"role":"admin","tenant":7}`)
	e, err = client.ParseEvent(pub, m)
	if err != nil || len(e.Args) != 0 {
		t.Errorf("no args: %+v, %v", e, err)
	}
	var role string
	var tenant int
	if ok, err := e.Claim("role", &role); !ok || err != nil || role != "admin" {
		t.Errorf("Claim role = %q, %v, %v", role, ok, err)
	}
	if ok, err := e.Claim("tenant", &tenant); !ok || err != nil || tenant != 7 {
		t.Errorf("Claim tenant = %d, %v, %v", tenant, ok, err)
	}
	if ok, err := e.Claim("tenant", &role); !ok || err == nil {
		t.Errorf("Claim of the wrong type = %v, %v", ok, err)
	}
	if ok, _ := e.Claim("plan", &role); ok {
		t.Error("Claim of an absent claim")
	}
	bad := inMsg(t, "ping", "")
	bad.Header.Set(api.HeaderClaims, `[1]`)
	if _, err := client.ParseEvent(pub, bad); err == nil {
		t.Error("claims not an object accepted")
	}
	e, err = client.ParseEvent(pub, &nats.Msg{Subject: "sb.in.bare", Data: []byte(`[]`)})
	if err != nil || e.Name != "bare" || e.UserID != "" {
		t.Errorf("no headers: %+v, %v", e, err)
	}

	for name, m := range map[string]*nats.Msg{
		"not an array":   inMsg(t, "x", `{"a":1}`),
		"bad json":       inMsg(t, "x", `[1,`),
		"wrong subject":  {Subject: "sb.out.user.alice", Data: []byte(`[]`)},
		"nested subject": {Subject: "sb.in.a.b", Data: []byte(`[]`)},
		"bad token":      {Subject: "sb.in.~YWxpY2U", Data: []byte(`[]`)},
	} {
		if e, err := client.ParseEvent(pub, m); err == nil {
			t.Errorf("%s: ParseEvent = %+v, want error", name, e)
		}
	}
}

// serve subscribes to sb.in.* and runs fn on every parsed event.
func serve(t *testing.T, nc *nats.Conn, fn func(*client.Event)) {
	t.Helper()
	sub, err := nc.Subscribe(subject.InAll, func(m *nats.Msg) {
		e, err := client.ParseEvent(nc, m)
		if err != nil {
			t.Errorf("ParseEvent: %v", err)
			return
		}
		fn(e)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestAck(t *testing.T) {
	gw, svc := conns(t)
	serve(t, svc, func(e *client.Event) {
		if !e.WantsAck() {
			t.Errorf("WantsAck = false for a request")
		}
		switch e.Name {
		case "none":
			if err := e.Ack(); err != nil {
				t.Error(err)
			}
		case "bad":
			if err := e.Ack(make(chan int)); err == nil {
				t.Error("unencodable ack accepted")
			}
			_ = e.Fail(api.CodeInternal, "could not encode")
		default:
			if err := e.Ack(map[string]string{"status": "ok"}, 2, nil); err != nil {
				t.Error(err)
			}
		}
	})
	reply, err := natsx.RequestMsg(ctx(t), gw, inMsg(t, "echo", `["x"]`))
	if err != nil {
		t.Fatal(err)
	}
	if string(reply.Data) != `[{"status":"ok"},2,null]` {
		t.Errorf("ack body = %s", reply.Data)
	}
	if e := natsx.ErrorFromMsg(reply); e != nil {
		t.Errorf("ack carries an error: %v", e)
	}
	reply, err = natsx.RequestMsg(ctx(t), gw, inMsg(t, "none", ``))
	if err != nil || string(reply.Data) != `[]` {
		t.Errorf("empty ack = %q, %v", reply.Data, err)
	}
	reply, err = natsx.RequestMsg(ctx(t), gw, inMsg(t, "bad", ``))
	if err != nil {
		t.Fatal(err)
	}
	if e := natsx.ErrorFromMsg(reply); e == nil || e.Code != 500 {
		t.Errorf("bad ack: %+v", e)
	}
}

func TestFailWithAck(t *testing.T) {
	gw, svc := conns(t)
	exc := subscribe(t, gw, "sb.out.>")
	serve(t, svc, func(e *client.Event) {
		if err := e.Fail(api.CodeBadRequest, "dur must be 1..86400"); err != nil {
			t.Error(err)
		}
	})
	reply, err := natsx.RequestMsg(ctx(t), gw, inMsg(t, "timerStart", `[{"dur":0}]`))
	if err != nil {
		t.Fatal(err)
	}
	if got := reply.Header.Get(micro.ErrorCodeHeader); got != "400" {
		t.Errorf("%s = %q, want 400", micro.ErrorCodeHeader, got)
	}
	if got := reply.Header.Get(micro.ErrorHeader); got != "dur must be 1..86400" {
		t.Errorf("%s = %q", micro.ErrorHeader, got)
	}
	e := natsx.ErrorFromMsg(reply)
	if e == nil || e.Code != 400 || e.Message != "dur must be 1..86400" {
		t.Errorf("ErrorFromMsg = %+v", e)
	}
	noMsg(t, exc) // an ack was asked: no exception event
}

func TestFailWithoutAck(t *testing.T) {
	gw, svc := conns(t)
	out := subscribe(t, gw, "sb.out.>")
	done := make(chan struct{})
	serve(t, svc, func(e *client.Event) {
		defer close(done)
		if err := e.Fail(api.CodeForbidden, "Not your socket"); err != nil {
			t.Error(err)
		}
	})
	m := inMsg(t, "disconnectRequest", `["other"]`)
	m.Header.Set(api.HeaderSocket, "sock.1") // encoded on the way out
	if err := gw.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	got := nextMsg(t, out)
	want, _ := subject.OutConn("sock.1")
	if got.Subject != want {
		t.Errorf("exception subject = %q, want %q", got.Subject, want)
	}
	if ev := got.Header.Get(api.HeaderEvent); ev != api.EventException {
		t.Errorf("Sb-Event = %q, want exception", ev)
	}
	if string(got.Data) != `{"status":"error","message":"Not your socket"}` {
		t.Errorf("exception body = %s", got.Data)
	}
	<-done
}

func TestFailWithoutAckOrSocket(t *testing.T) {
	pub, sub := conns(t)
	out := subscribe(t, sub, "sb.out.>")
	e, err := client.ParseEvent(pub, &nats.Msg{Subject: "sb.in.x"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Fail(400, "nowhere to send"); err != nil {
		t.Errorf("Fail without socket: %v", err)
	}
	noMsg(t, out)
}

func TestEmitWithAck(t *testing.T) {
	svc, gw := conns(t)
	// A fake gateway: answers deliveries on its socket's subject with the
	// client's ack, or with a micro error for socket "gone".
	subj, _ := subject.OutConn("sock.1")
	sub, err := gw.Subscribe("sb.out.conn.*", func(m *nats.Msg) {
		if m.Subject == subj && m.Header.Get(api.HeaderEvent) == "question" && string(m.Data) == `{"q":"ready?"}` {
			_ = m.Respond([]byte(`["ok"]`))
			return
		}
		r := nats.NewMsg(m.Reply)
		r.Header.Set(micro.ErrorCodeHeader, "404")
		r.Header.Set(micro.ErrorHeader, "no such socket")
		_ = gw.PublishMsg(r)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := gw.Flush(); err != nil {
		t.Fatal(err)
	}
	c := client.New(svc)

	args, err := c.EmitWithAck(ctx(t), "sock.1", "question", map[string]string{"q": "ready?"})
	if err != nil {
		t.Fatal(err)
	}
	if len(args) != 1 || string(args[0]) != `"ok"` {
		t.Errorf("ack args = %q", args)
	}

	_, err = c.EmitWithAck(ctx(t), "other", "question", nil)
	var e *natsx.Error
	if !errors.As(err, &e) || e.Code != 404 {
		t.Errorf("err = %v, want 404 *natsx.Error", err)
	}

	if _, err := c.EmitWithAck(ctx(t), "sock.1", "disconnect", nil); !errors.Is(err, client.ErrEventName) {
		t.Errorf("reserved event: %v", err)
	}
	if _, err := c.EmitWithAck(ctx(t), "", "x", nil); !errors.Is(err, subject.ErrInvalidID) {
		t.Errorf("empty socket id: %v", err)
	}
}

func TestEmitWithAckUnavailable(t *testing.T) {
	svc, _ := conns(t)
	c := client.New(svc)
	if _, err := c.EmitWithAck(ctx(t), "nobody", "x", 1); !errors.Is(err, natsx.ErrUnavailable) {
		t.Errorf("no gateway: %v, want ErrUnavailable", err)
	}
}

func TestEmitWithAckBadReply(t *testing.T) {
	svc, gw := conns(t)
	sub, err := gw.Subscribe("sb.out.conn.*", func(m *nats.Msg) { _ = m.Respond([]byte(`{"not":"array"}`)) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := gw.Flush(); err != nil {
		t.Fatal(err)
	}
	_, err = client.New(svc).EmitWithAck(ctx(t), "s1", "x", 1)
	if err == nil || !strings.Contains(err.Error(), "decode ack") {
		t.Errorf("err = %v, want decode ack error", err)
	}
}

func TestDeliveryMsg(t *testing.T) {
	m, err := client.DeliveryMsg("sb.out.all", "x", json.RawMessage(`{"a":1}`))
	if err != nil || m.Subject != "sb.out.all" || m.Header.Get(api.HeaderEvent) != "x" || string(m.Data) != `{"a":1}` {
		t.Errorf("DeliveryMsg = %+v, %v", m, err)
	}
	m, err = client.DeliveryMsg("sb.out.all", "x", nil)
	if err != nil || len(m.Data) != 0 {
		t.Errorf("nil payload = %q, %v", m.Data, err)
	}
	if _, err := client.DeliveryMsg("sb.out.all", "connect", nil); !errors.Is(err, client.ErrEventName) {
		t.Errorf("reserved: %v", err)
	}
}
