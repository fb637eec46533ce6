package echosvc

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
)

func event(name, ns, body string) *nats.Msg {
	m := nats.NewMsg("sb.in." + name)
	m.Header.Set(api.HeaderSocket, "sock1")
	m.Header.Set(api.HeaderNamespace, ns)
	m.Header.Set(api.HeaderUser, "u")
	m.Data = []byte(body)
	return m
}

func TestEcho(t *testing.T) {
	srv := natstest.Run(t)
	nc := srv.Conn(t)
	svc, err := Start(slog.New(slog.NewTextHandler(io.Discard, nil)), srv.Conn(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	out, _ := nc.SubscribeSync("sb.out.conn.sock1")
	_ = nc.Flush()

	cases := []struct {
		name     string
		in       *nats.Msg
		event    string
		body     string
		delivers bool
	}{
		{"auth payload", event("connect", "/", `[{"token":"123"}]`), "auth", `[{"token":"123"}]`, true},
		{"no auth payload", event("connect", "/custom", `[]`), "auth", `[{}]`, true},
		{"other namespace", event("connect", "/admin", `[]`), "", "", false},
		{"message", event("message", "/", `[1,"2",{"3":[true]},{"_binary":"BA=="}]`), "message-back", `[1,"2",{"3":[true]},{"_binary":"BA=="}]`, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := nc.PublishMsg(tc.in); err != nil {
				t.Fatal(err)
			}
			m, err := out.NextMsg(500 * time.Millisecond)
			if !tc.delivers {
				if err == nil {
					t.Fatalf("unexpected delivery %s", m.Data)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.Header.Get(api.HeaderEvent) != tc.event || m.Header.Get(api.HeaderArgs) != api.ArgsArray || string(m.Data) != tc.body {
				t.Fatalf("got %v %s", m.Header, m.Data)
			}
		})
	}
	reply, err := nc.RequestMsg(event("message-with-ack", "/", `[1,{"_binary":"AQ=="}]`), time.Second)
	if err != nil || string(reply.Data) != `[1,{"_binary":"AQ=="}]` {
		t.Fatalf("ack %v %v", reply, err)
	}
	reply, err = nc.RequestMsg(event("unknown", "/", `[]`), time.Second)
	if err != nil || reply.Header.Get("Nats-Service-Error-Code") != "404" {
		t.Fatalf("unknown event ack %v %v", reply, err)
	}
}
