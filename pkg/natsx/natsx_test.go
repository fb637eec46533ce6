package natsx_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
)

type echoReq struct {
	Name string `json:"name"`
	Mode string `json:"mode"`
}

type echoResp struct {
	Greeting string `json:"greeting"`
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu chan struct{}
	b  bytes.Buffer
}

func newSyncBuffer() *syncBuffer { s := &syncBuffer{mu: make(chan struct{}, 1)}; return s }

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu <- struct{}{}
	defer func() { <-s.mu }()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu <- struct{}{}
	defer func() { <-s.mu }()
	return s.b.String()
}

// startService runs a micro service with one endpoint "test.echo" built with
// Handle.
func startService(t *testing.T, nc *nats.Conn, log *slog.Logger) {
	t.Helper()
	svc, err := micro.AddService(nc, micro.Config{Name: "echo", Version: "0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	h := natsx.Handle(log, time.Second, func(ctx context.Context, r echoReq) (echoResp, error) {
		if _, ok := ctx.Deadline(); !ok {
			return echoResp{}, errors.New("no deadline")
		}
		switch r.Mode {
		case "limit":
			return echoResp{}, natsx.Errorf(429, "Too many")
		case "wrapped":
			return echoResp{}, fmt.Errorf("check: %w", natsx.Errorf(403, "Forbidden %s", r.Name))
		case "plain":
			return echoResp{}, errors.New("db exploded: secret detail")
		case "unavailable":
			return echoResp{}, fmt.Errorf("store: %w", natsx.ErrUnavailable)
		case "slow":
			<-ctx.Done()
			return echoResp{}, ctx.Err()
		}
		return echoResp{Greeting: "hello " + r.Name}, nil
	})
	if err := svc.AddEndpoint("echo", h, micro.WithEndpointSubject("test.echo")); err != nil {
		t.Fatal(err)
	}
	// The caller uses another connection: make sure the server has the
	// endpoint's subscription before it sends.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func setup(t *testing.T) (*nats.Conn, *syncBuffer) {
	t.Helper()
	s := natstest.Run(t)
	logs := newSyncBuffer()
	log := slog.New(slog.NewTextHandler(logs, nil))
	startService(t, s.Conn(t), log)
	return s.Conn(t), logs
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestRequestHappyPath(t *testing.T) {
	nc, _ := setup(t)
	resp, err := natsx.Request[echoResp](ctx(t), nc, "test.echo", echoReq{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Greeting != "hello alice" {
		t.Errorf("Greeting = %q", resp.Greeting)
	}
}

func TestHandleErrors(t *testing.T) {
	nc, logs := setup(t)
	tests := []struct {
		name string
		mode string
		code int
		msg  string
	}{
		{"coded", "limit", 429, "Too many"},
		{"wrapped coded", "wrapped", 403, "Forbidden bob"},
		{"plain error", "plain", 500, "internal error"},
		{"unavailable", "unavailable", 503, "Service unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := natsx.Request[echoResp](ctx(t), nc, "test.echo", echoReq{Name: "bob", Mode: tt.mode})
			var e *natsx.Error
			if !errors.As(err, &e) {
				t.Fatalf("err = %v (%T), want *natsx.Error", err, err)
			}
			if e.Code != tt.code || e.Message != tt.msg {
				t.Errorf("error = %d %q, want %d %q", e.Code, e.Message, tt.code, tt.msg)
			}
			if natsx.CodeOf(err) != tt.code {
				t.Errorf("CodeOf = %d", natsx.CodeOf(err))
			}
		})
	}
	if !strings.Contains(logs.String(), "db exploded") {
		t.Errorf("a 500 is not logged by the service:\n%s", logs.String())
	}
}

func TestHandleBadJSON(t *testing.T) {
	nc, _ := setup(t)
	for _, body := range []string{"", "{", "[1,2]", `{"name":1}`, "\xff"} {
		reply, err := natsx.RequestMsg(ctx(t), nc, &nats.Msg{Subject: "test.echo", Data: []byte(body)})
		if err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		e := natsx.ErrorFromMsg(reply)
		if e == nil || e.Code != 400 || !strings.HasPrefix(e.Message, "invalid request") {
			t.Errorf("body %q: error = %+v, want 400 invalid request", body, e)
		}
	}
}

func TestHandleTimeoutBoundsContext(t *testing.T) {
	nc, _ := setup(t)
	start := time.Now()
	_, err := natsx.Request[echoResp](ctx(t), nc, "test.echo", echoReq{Mode: "slow"})
	if natsx.CodeOf(err) != 500 {
		t.Errorf("slow handler: %v, want a 500", err)
	}
	if d := time.Since(start); d > 1900*time.Millisecond {
		t.Errorf("slow handler answered after %v, want ~1s", d)
	}
}

func TestNoResponders(t *testing.T) {
	s := natstest.Run(t)
	nc := s.Conn(t)
	_, err := natsx.Request[echoResp](ctx(t), nc, "test.nobody", echoReq{})
	if !errors.Is(err, natsx.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if natsx.CodeOf(err) != 503 {
		t.Errorf("CodeOf = %d, want 503", natsx.CodeOf(err))
	}
}

func TestTimeout(t *testing.T) {
	s := natstest.Run(t)
	nc := s.Conn(t)
	sub, err := nc.SubscribeSync("test.silent") // receives, never answers
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	c, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = natsx.Request[echoResp](c, nc, "test.silent", echoReq{})
	if !errors.Is(err, natsx.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
}

func TestRequestBadReply(t *testing.T) {
	s := natstest.Run(t)
	nc := s.Conn(t)
	sub, err := nc.Subscribe("test.garbage", func(m *nats.Msg) { _ = m.Respond([]byte("not json")) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	_, err = natsx.Request[echoResp](ctx(t), nc, "test.garbage", echoReq{})
	if err == nil || errors.Is(err, natsx.ErrUnavailable) || !strings.Contains(err.Error(), "decode reply") {
		t.Errorf("err = %v, want a decode error", err)
	}
	if _, err := natsx.Request[echoResp](ctx(t), nc, "test.garbage", make(chan int)); err == nil {
		t.Error("unencodable request accepted")
	}
}

func TestErrorFromMsg(t *testing.T) {
	h := func(kv ...string) *nats.Msg {
		m := nats.NewMsg("x")
		for i := 0; i < len(kv); i += 2 {
			m.Header.Set(kv[i], kv[i+1])
		}
		return m
	}
	tests := []struct {
		name string
		m    *nats.Msg
		want *natsx.Error
	}{
		{"nil", nil, nil},
		{"no header", &nats.Msg{Subject: "x"}, nil},
		{"unrelated header", h("A", "b"), nil},
		{"coded", h(micro.ErrorCodeHeader, "404", micro.ErrorHeader, "not found"), &natsx.Error{Code: 404, Message: "not found"}},
		{"bad code", h(micro.ErrorCodeHeader, "x", micro.ErrorHeader, "boom"), &natsx.Error{Code: 500, Message: "boom"}},
		{"only description", h(micro.ErrorHeader, "boom"), &natsx.Error{Code: 500, Message: "boom"}},
	}
	for _, tt := range tests {
		got := natsx.ErrorFromMsg(tt.m)
		if (got == nil) != (tt.want == nil) || (got != nil && *got != *tt.want) {
			t.Errorf("%s: ErrorFromMsg = %+v, want %+v", tt.name, got, tt.want)
		}
	}
	if got := natsx.Errorf(429, "Too %s", "many").Error(); got != "429 Too many" {
		t.Errorf("Error() = %q", got)
	}
}

func TestDrainCloses(t *testing.T) {
	s := natstest.Run(t)
	nc := s.Conn(t)
	got := make(chan string, 1)
	if _, err := nc.Subscribe("test.drain", func(m *nats.Msg) { got <- string(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("test.drain", []byte("last")); err != nil {
		t.Fatal(err)
	}
	natsx.Drain(nc, 5*time.Second)
	if !nc.IsClosed() {
		t.Fatal("connection not closed after Drain")
	}
	select {
	case m := <-got:
		if m != "last" {
			t.Errorf("got %q", m)
		}
	default:
		t.Error("pending message not delivered before close")
	}
	natsx.Drain(nc, time.Second)  // closed: no-op
	natsx.Drain(nil, time.Second) // nil: no-op
}

func TestConnect(t *testing.T) {
	s := natstest.Run(t)
	logs := newSyncBuffer()
	log := slog.New(slog.NewTextHandler(logs, nil))
	nc, err := natsx.Connect(context.Background(), log, s.URL(), "natsx-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if !nc.IsConnected() {
		t.Error("not connected")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := natsx.Connect(ctx, log, "nats://127.0.0.1:1", "natsx-test"); err == nil || !strings.Contains(err.Error(), "connect nats") {
		t.Errorf("Connect to a closed port: %v", err)
	}
}

// A service started before NATS waits for it instead of failing.
func TestConnectWaitsForServer(t *testing.T) {
	port := natstest.FreePort(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		nc, err := natsx.Connect(ctx, log, fmt.Sprintf("nats://127.0.0.1:%d", port), "natsx-test")
		done <- result{nc, err}
	}()
	time.Sleep(700 * time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("Connect returned before the server started: %v", r.err)
	default:
	}
	natstest.RunWith(t, func(o *server.Options) { o.Port = port })
	r := <-done
	if r.err != nil {
		t.Fatalf("Connect after the server started: %v", r.err)
	}
	defer r.nc.Close()
	if !r.nc.IsConnected() {
		t.Fatal("not connected")
	}
}

// A slow request does not hold up the endpoint's other requests.
func TestHandleServesConcurrently(t *testing.T) {
	nc, _ := setup(t)
	slow := make(chan error, 1)
	go func() {
		c, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err := natsx.Request[echoResp](c, nc, "test.echo", echoReq{Mode: "slow"})
		slow <- err
	}()
	time.Sleep(100 * time.Millisecond) // the slow one is being handled
	start := time.Now()
	resp, err := natsx.Request[echoResp](ctx(t), nc, "test.echo", echoReq{Name: "quick"})
	if err != nil || resp.Greeting != "hello quick" {
		t.Fatalf("quick request: %+v %v", resp, err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("quick request waited %v behind the slow one", d)
	}
	if err := <-slow; err == nil {
		t.Fatal("slow request should fail at its handler timeout")
	}
}
