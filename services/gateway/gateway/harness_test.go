package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/services/auth/authsvc"
	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
)

const testSecret = "gateway-test-secret-0123456789-0123456789"

// stack is a gateway with the real auth and presence services on an
// embedded NATS server.
type stack struct {
	t    testing.TB
	srv  *natstest.Server
	nc   *nats.Conn // a backend client connection
	gw   *Gateway
	auth *authsvc.Service
	pres *presencesvc.Service
	logs *lockedWriter
}

type stackOpt func(*Config, *presencesvc.Config)

func newStack(t testing.TB, opts ...stackOpt) *stack {
	t.Helper()
	return newStackOn(t, natstest.Run(t), opts...)
}

// newStackOn is newStack on a given server.
func newStackOn(t testing.TB, srv *natstest.Server, opts ...stackOpt) *stack {
	t.Helper()
	return newStackAuth(t, srv, nil, opts...)
}

// newStackAuth is newStackOn with the auth service's configuration changed
// by af (when not nil).
func newStackAuth(t testing.TB, srv *natstest.Server, af func(*authsvc.Config), opts ...stackOpt) *stack {
	t.Helper()
	st := &stack{t: t, srv: srv, logs: &lockedWriter{}}
	log := slog.New(slog.NewTextHandler(st.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	st.nc = st.srv.Conn(t)

	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.RequestTimeout = 2 * time.Second
	cfg.HeartbeatInterval = 200 * time.Millisecond
	// Every test client shares one address.
	cfg.MaxEnginesPerIP, cfg.HandshakeRate, cfg.HandshakeBurst = cfg.MaxEngines, 1e6, 1e6
	pcfg := presencesvc.DefaultConfig()
	for _, o := range opts {
		o(&cfg, &pcfg)
	}
	acfg := authsvc.DefaultConfig()
	acfg.Verifier = "jwt"
	acfg.JWT.Secret = testSecret
	if af != nil {
		af(&acfg)
	}
	var err error
	if st.auth, err = authsvc.Start(context.Background(), log, st.srv.Conn(t), acfg); err != nil {
		t.Fatalf("start auth: %v", err)
	}
	t.Cleanup(func() { _ = st.auth.Stop() })
	if st.pres, err = presencesvc.Start(context.Background(), log, st.srv.Conn(t), pcfg); err != nil {
		t.Fatalf("start presence: %v", err)
	}
	t.Cleanup(func() { _ = st.pres.Stop() })
	if st.gw, err = Start(context.Background(), log, st.srv.Conn(t), cfg); err != nil {
		t.Fatalf("start gateway: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = st.gw.Stop(ctx)
		if t.Failed() {
			t.Logf("service logs:\n%s", st.logs.String())
		}
	})
	return st
}

func (st *stack) token(uid string) string {
	tok, err := authsvc.MintToken(testSecret, "", "", uid, time.Hour)
	if err != nil {
		st.t.Fatalf("mint: %v", err)
	}
	return tok
}

func (st *stack) url(query string) string {
	u := fmt.Sprintf("ws://%s/socket.io/?EIO=4&transport=websocket", st.gw.Addr())
	if query != "" {
		u += "&" + query
	}
	return u
}

// wsClient is a raw Engine.IO/Socket.IO client over a WebSocket. A reader
// goroutine feeds frames to a channel, so reads can time out without
// breaking the connection.
type wsClient struct {
	t      testing.TB
	c      *websocket.Conn
	open   map[string]any
	frames chan string
	rerr   error // set before frames is closed
}

func (st *stack) dial(query string, header http.Header) *wsClient {
	st.t.Helper()
	c, resp, err := websocket.DefaultDialer.Dial(st.url(query), header)
	if err != nil {
		body := ""
		if resp != nil {
			b, _ := io.ReadAll(resp.Body)
			body = string(b)
		}
		st.t.Fatalf("dial: %v %s", err, body)
	}
	st.t.Cleanup(func() { _ = c.Close() })
	w := &wsClient{t: st.t, c: c, frames: make(chan string, 4096)}
	go func() {
		for {
			typ, b, err := c.ReadMessage()
			if err != nil {
				w.rerr = err
				close(w.frames)
				return
			}
			if typ == websocket.BinaryMessage {
				w.frames <- "<binary>" + string(b)
				continue
			}
			w.frames <- string(b)
		}
	}()
	first := w.read()
	if !strings.HasPrefix(first, "0{") {
		st.t.Fatalf("first frame %q, want open packet", first)
	}
	if err := json.Unmarshal([]byte(first[1:]), &w.open); err != nil {
		st.t.Fatalf("open payload: %v", err)
	}
	return w
}

func (w *wsClient) send(s string) {
	w.t.Helper()
	if err := w.c.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
		w.t.Fatalf("write %q: %v", s, err)
	}
}

// read returns the next text frame, answering pings on the way.
func (w *wsClient) read() string {
	w.t.Helper()
	for {
		s, err := w.tryRead(5 * time.Second)
		if err != nil {
			w.t.Fatalf("read: %v", err)
		}
		if s == "2" {
			w.send("3")
			continue
		}
		return s
	}
}

var errReadTimeout = errors.New("read timeout")

func (w *wsClient) tryRead(d time.Duration) (string, error) {
	select {
	case s, ok := <-w.frames:
		if !ok {
			return "", w.rerr
		}
		return s, nil
	case <-time.After(d):
		return "", errReadTimeout
	}
}

// expect reads frames until one starts with prefix (skipping `connections`
// updates unless asked for) and returns it.
func (w *wsClient) expect(prefix string) string {
	w.t.Helper()
	for {
		s := w.read()
		if strings.HasPrefix(s, prefix) {
			return s
		}
		if isUpdate(s) {
			continue
		}
		w.t.Fatalf("got %q, want prefix %q", s, prefix)
	}
}

// connect sends a CONNECT with the given auth payload and returns the reply.
func (w *wsClient) connect(auth string) string {
	w.t.Helper()
	w.send("40" + auth)
	return w.read()
}

// mustConnect connects as uid and returns the socket id.
func (st *stack) mustConnect(uid, query string) (*wsClient, string) {
	st.t.Helper()
	w := st.dial(query, nil)
	reply := w.connect(fmt.Sprintf(`{"token":%q}`, st.token(uid)))
	var sid struct {
		SID string `json:"sid"`
	}
	if !strings.HasPrefix(reply, "40{") || json.Unmarshal([]byte(reply[2:]), &sid) != nil || sid.SID == "" {
		st.t.Fatalf("connect reply %q", reply)
	}
	return w, sid.SID
}

// expectClosed waits for the server to close the connection.
func (w *wsClient) expectClosed(within time.Duration) *websocket.CloseError {
	w.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		_, err := w.tryRead(time.Until(deadline))
		if err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				return ce
			}
			if errors.Is(err, errReadTimeout) {
				break
			}
			return &websocket.CloseError{Code: websocket.CloseAbnormalClosure, Text: err.Error()}
		}
	}
	w.t.Fatalf("connection not closed within %v", within)
	return nil
}

func eventually(t testing.TB, d time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// skipUpdates is tryRead that skips `connections` updates.
func (w *wsClient) skipUpdates(d time.Duration) (string, error) {
	deadline := time.Now().Add(d)
	for {
		s, err := w.tryRead(time.Until(deadline))
		if err != nil || !isUpdate(s) {
			return s, err
		}
	}
}

// isUpdate reports whether a frame is a `connections` update (any namespace).
func isUpdate(s string) bool {
	return strings.HasPrefix(s, "42") && strings.Contains(s, `["connections",`)
}

// smallBufferDialer dials WebSockets with a 4 KB receive buffer, so that a
// client that stops reading backs up into the gateway quickly.
func smallBufferDialer() *websocket.Dialer {
	return &websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4096)
		}
		return c, err
	}}
}

// probeWS opens a WebSocket for the polling session sid at addr and
// completes its probe (2probe, 3probe); the upgrade's `5` is the caller's.
func probeWS(t testing.TB, addr, sid string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://%s/socket.io/?EIO=4&transport=websocket&sid=%s", addr, sid), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.WriteMessage(websocket.TextMessage, []byte("2probe")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, b, err := c.ReadMessage(); err != nil || string(b) != "3probe" {
		t.Fatalf("probe answer %q %v", b, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c
}

// count is the number of sockets the hub holds.
func (h *hub) count() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.sockets)
}

// engines is the number of admitted engines.
func (a *admission) engines() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.total
}
