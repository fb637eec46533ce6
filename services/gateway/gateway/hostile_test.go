package gateway

// Regression tests for inputs a hostile client can send: each must get a
// defined answer without crashing the gateway, without unbounded memory or
// time, and without affecting other connections.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/client"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
)

// allocatedDuring reports the bytes the process allocated while fn ran.
func allocatedDuring(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// One attachment named by 20 000 placeholders was copied once per
// placeholder (50 KB → 1.3 GB). The event is refused as malformed and the
// gateway allocates about what the client sent.
func TestRepeatedPlaceholdersRefused(t *testing.T) {
	st := newStack(t)
	bystander, _ := st.mustConnect("bea", "")
	sub, _ := st.nc.SubscribeSync("sb.in.x")
	_ = st.nc.Flush()
	w, _ := st.mustConnect("mal", "")
	frame := `451-["x",` + strings.Repeat(`{"_placeholder":true,"num":0},`, 20000) + `0]`
	alloc := allocatedDuring(func() {
		w.send(frame)
		must(t, w.c.WriteMessage(websocket.BinaryMessage, make([]byte, 50000)))
		w.expectClosed(2 * time.Second)
	})
	if limit := uint64(64 << 20); alloc > limit {
		t.Errorf("allocated %d MB for one event, want < %d MB", alloc>>20, limit>>20)
	}
	if m, err := sub.NextMsg(200 * time.Millisecond); err == nil {
		t.Fatalf("refused event reached NATS: %d bytes", len(m.Data))
	}
	must(t, client.New(st.nc).NotifyUser("bea", "still", "here"))
	if got := bystander.expect(`42["still"`); got != `42["still","here"]` {
		t.Fatalf("bystander got %q", got)
	}
}

// A relayed WebSocket whose client never reads fills its send queue at the
// gateway that took it; that gateway must close it, not panic.
func TestRelayedSlowClientClosedWithoutCrash(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) { c.SendQueue = 8 })
	gw2 := st.secondGateway(func(c *Config) { c.SendQueue = 8 })
	p := st.poller()
	p.connect(st.token("slo"))
	c, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://%s/socket.io/?EIO=4&transport=websocket&sid=%s", gw2.Addr(), p.sid), nil)
	must(t, err)
	defer c.Close()
	must(t, c.WriteMessage(websocket.TextMessage, []byte("2probe")))
	must(t, c.WriteMessage(websocket.TextMessage, []byte("5")))
	// Pings of 60 KB, each answered with a pong of 60 KB, never read.
	ping := []byte("2" + strings.Repeat("p", 60000))
	closed := false
	for i := 0; i < 5000 && !closed; i++ {
		_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		closed = c.WriteMessage(websocket.TextMessage, ping) != nil
	}
	// The session ends and its slot is freed; both gateways still serve.
	eventually(t, 5*time.Second, func() bool { return len(st.presenceList("slo")) == 0 }, "slot of the slow relayed client released")
	// (A panic in either gateway would have ended this test binary.)
	w, _ := st.mustConnect("ok", "")
	must(t, client.New(st.nc).NotifyUser("ok", "still", "here"))
	if got := w.expect(`42["still"`); got != `42["still","here"]` {
		t.Fatalf("got %q", got)
	}
}

// rawConnect opens a WebSocket with a small receive buffer that the test
// reads only when it wants to, and joins "/" as uid; it returns the
// connection and the socket id.
func (st *stack) rawConnect(uid string) (*websocket.Conn, string) {
	st.t.Helper()
	c, _, err := smallBufferDialer().Dial(st.url(""), nil)
	if err != nil {
		st.t.Fatal(err)
	}
	st.t.Cleanup(func() { _ = c.Close() })
	_, _, _ = c.ReadMessage() // open packet
	_ = c.WriteMessage(websocket.TextMessage, []byte(`40{"token":"`+st.token(uid)+`"}`))
	_, msg, _ := c.ReadMessage()
	var reply struct{ SID string }
	if len(msg) < 2 || json.Unmarshal(msg[2:], &reply) != nil {
		st.t.Fatalf("connect reply %q", msg)
	}
	return c, reply.SID
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// Attachments of a binary packet for a namespace not joined (here: before
// any CONNECT) were buffered until the connect timeout: 63 MB per
// connection without a login. They are dropped as they arrive; a joined
// socket's attachments may total at most max_payload.
func TestAttachmentsBounded(t *testing.T) {
	st := newStack(t)
	w := st.dial("", nil)
	before := heapInUse()
	w.send(`4563-["x"]`)
	frame := make([]byte, 1000000)
	for range 63 {
		must(t, w.c.WriteMessage(websocket.BinaryMessage, frame))
	}
	// The engine is still open and usable.
	if got := w.connectReply(`{"token":"` + st.token("ann") + `"}`); !strings.HasPrefix(got, "40{") {
		t.Fatalf("connect after dropped attachments: %q", got)
	}
	if grew := int64(heapInUse()) - int64(before); grew > 16<<20 {
		t.Fatalf("heap grew by %d MB holding attachments of a packet nobody takes", grew>>20)
	}
	// Joined: attachments over max_payload in total close the connection.
	w.send(`453-["x"]`)
	for range 2 {
		must(t, w.c.WriteMessage(websocket.BinaryMessage, frame[:600<<10]))
	}
	if ce := w.expectClosed(2 * time.Second); ce.Code != websocket.CloseProtocolError {
		t.Fatalf("close %d, want 1002", ce.Code)
	}
}

// After its last namespace disconnects, an engine holds no slot: it was
// kept forever. It is closed after connect_timeout unless it joins again.
func TestEngineWithoutSocketsTimesOut(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) { c.ConnectTimeout = time.Second })
	w, _ := st.mustConnect("idle", "")
	w.send("41")
	start := time.Now()
	w.expectClosed(3 * time.Second)
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Fatalf("closed after %s, before connect_timeout", d)
	}
	// Joining again in time keeps the engine.
	w2, _ := st.mustConnect("idle", "")
	w2.send("41")
	time.Sleep(500 * time.Millisecond)
	if got := w2.connectReply(`{"token":"` + st.token("idle") + `"}`); !strings.HasPrefix(got, "40{") {
		t.Fatalf("reconnect: %q", got)
	}
	time.Sleep(1500 * time.Millisecond)
	must(t, client.New(st.nc).NotifyUser("idle", "still", "here"))
	if got := w2.expect(`42["still"`); got != `42["still","here"]` {
		t.Fatalf("got %q", got)
	}
}

// CONNECT/DISCONNECT loops on one engine cost an auth request and presence
// writes each: past maxConnectsPerMinute the engine is refused and closed.
func TestConnectLoopBounded(t *testing.T) {
	st := newStack(t)
	w, _ := st.mustConnect("loop", "")
	w.send("41")
	for i := 1; i < maxConnectsPerMinute; i++ {
		if got := w.connectReply(`{"token":"` + st.token("loop") + `"}`); !strings.HasPrefix(got, "40{") {
			t.Fatalf("connect %d: %q", i+1, got)
		}
		w.send("41")
	}
	if got := w.connectReply(`{"token":"` + st.token("loop") + `"}`); got != `44{"message":"Too many connection attempts"}` {
		t.Fatalf("connect %d: %q", maxConnectsPerMinute+1, got)
	}
	w.expectClosed(2 * time.Second)
	eventually(t, 3*time.Second, func() bool { return len(st.presenceList("loop")) == 0 }, "no slot left")
}

// A client that stops reading while large messages pile up is closed once
// send_queue_bytes are queued, long before send_queue messages.
func TestSendQueueBytesBound(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) {
		c.MaxPayload, c.SendQueue, c.SendQueueBytes = 64<<10, 4096, 256<<10
	})
	c, sid := st.rawConnect("big")
	payload := strings.Repeat("z", 48<<10)
	cl := client.New(st.nc)
	for i := range 400 { // 19 MB, more than socket buffers hold
		must(t, cl.NotifyConn(sid, "bulk", map[string]any{"i": i, "p": payload}))
	}
	must(t, st.nc.Flush())
	// Within a few seconds, not at the write timeout (10 s) of a full socket.
	eventually(t, 3*time.Second, func() bool { return st.gw.hub.count() == 0 }, "slow client disconnected by bytes")
	_ = c.Close()

	// Long-polling: packets wait for a GET; their bytes are bounded too.
	p := st.poller()
	psid := p.connect(st.token("big"))
	for i := range 8 {
		must(t, cl.NotifyConn(psid, "bulk", map[string]any{"i": i, "p": payload}))
	}
	must(t, st.nc.Flush())
	eventually(t, 5*time.Second, func() bool { return st.gw.hub.count() == 0 }, "polling client disconnected by bytes")
}

// connectReply sends a CONNECT and returns its answer, skipping
// `connections` updates.
func (w *wsClient) connectReply(auth string) string {
	w.t.Helper()
	w.send("40" + auth)
	for {
		if s := w.read(); !isUpdate(s) {
			return s
		}
	}
}

// Deliveries that find their dispatcher shard full are dropped by NATS (a
// slow consumer): they used to vanish while the socket stayed open. Now
// the socket they were for is closed: what it received is a gap-free
// prefix, and it is complete unless the socket was closed.
func TestDroppedDeliveryClosesSocket(t *testing.T) {
	st := newStack(t)
	gw2 := st.secondGatewayWith([]Option{withShardBuffer(1)}, func(c *Config) {
		c.SendQueue, c.SendQueueBytes = 1<<16, 64<<20
	})
	via := *st
	via.gw = gw2
	w, sid := via.mustConnect("dro", "")
	cl := client.New(st.nc)
	const n = 5000
	for i := range n {
		must(t, cl.NotifyConn(sid, "seq", i))
	}
	must(t, st.nc.Flush())
	next, closed := 0, false
	for !closed && next < n {
		s, err := w.tryRead(3 * time.Second)
		switch {
		case errors.Is(err, errReadTimeout):
			t.Fatalf("received %d of %d and the socket is still open", next, n)
		case err != nil:
			closed = true
		case strings.HasPrefix(s, `42["seq",`):
			if want := fmt.Sprintf(`42["seq",%d]`, next); s != want {
				t.Fatalf("got %s, want %s: a delivery was lost while the socket stayed open", s, want)
			}
			next++
		}
	}
	if next < n && !closed {
		t.Fatalf("received %d of %d and the socket is still open", next, n)
	}
	t.Logf("received %d of %d, closed %v", next, n, closed)
	if next == n {
		t.Log("no delivery was dropped this run")
	}
}

// A socket whose user subscriptions cannot be made leaves nothing behind:
// its connection subscription was kept and it stayed in the hub.
func TestAddSocketFailureLeaksNothing(t *testing.T) {
	st := newStack(t)
	g := st.gw
	g.subsMu.RLock()
	before := len(g.subs)
	g.subsMu.RUnlock()
	e := newEngine(g, httptest.NewRequest(http.MethodGet, "/socket.io/", nil))
	s := &socket{e: e, ns: "/", id: newID(), conn: api.Conn{UserID: strings.Repeat("u", subject.MaxIDLen+1)}}
	if err := g.hub.addSocket(s); err == nil {
		t.Fatal("addSocket of an invalid user id succeeded")
	}
	g.subsMu.RLock()
	after := len(g.subs)
	g.subsMu.RUnlock()
	if after != before || g.hub.socket(s.id) != nil {
		t.Fatalf("subscriptions %d → %d, socket in hub: %v", before, after, g.hub.socket(s.id) != nil)
	}
}

// Event names that a NATS header would rewrite (control characters, white
// space at either end) let a client make Sb-Event read "disconnect": they
// are refused and nothing is published.
func TestEventNamesThatForgeHeadersRefused(t *testing.T) {
	st := newStack(t)
	sub, _ := st.nc.SubscribeSync("sb.in.>")
	_ = st.nc.Flush()
	w, _ := st.mustConnect("fox", "")
	for _, name := range []string{"disconnect\n", "disconnect\r", " disconnect", "disconnect ", "dis\x00connect", "\tconnect", "x\x7f"} {
		frame, _ := json.Marshal([]string{name})
		w.send("421" + string(frame))
		if got := w.expect("431"); got != `431[{"status":"error","message":"Invalid event name"}]` {
			t.Fatalf("%q: ack %q", name, got)
		}
	}
	for {
		m, err := sub.NextMsg(200 * time.Millisecond)
		if err != nil {
			break
		}
		if ev := m.Header.Get("Sb-Event"); ev != "connect" || m.Subject != "sb.in.connect" {
			t.Fatalf("published %s with Sb-Event %q", m.Subject, ev)
		}
	}
}

// A service asking a client's ack with a reply subject that is not an
// inbox (here: another user's delivery subject) gets nothing published
// there.
func TestAckOnlyToInboxes(t *testing.T) {
	st := newStack(t)
	victim, _ := st.mustConnect("vic", "")
	w, sid := st.mustConnect("ack", "")
	m := nats.NewMsg("sb.out.conn." + sid)
	m.Header.Set("Sb-Event", "ask")
	m.Reply = "sb.out.user.vic"
	m.Data = []byte(`"q"`)
	must(t, st.nc.PublishMsg(m))
	if s, err := w.tryRead(500 * time.Millisecond); err == nil && !isUpdate(s) {
		t.Fatalf("client got %q for a delivery with a forged reply", s)
	}
	// A real request with an inbox works.
	go func() {
		s := w.expect(`421["ask"`)
		w.send("431" + "[\"yes\"]")
		_ = s
	}()
	req := nats.NewMsg("sb.out.conn." + sid)
	req.Header.Set("Sb-Event", "ask")
	req.Data = []byte(`"q"`)
	reply, err := st.nc.RequestMsg(req, 3*time.Second)
	if err != nil || string(reply.Data) != `["yes"]` {
		t.Fatalf("ack: %v %v", reply, err)
	}
	if s, err := victim.tryRead(300 * time.Millisecond); err == nil && !isUpdate(s) {
		t.Fatalf("the other user got %q", s)
	}
}

// Many sockets that connect and leave with expiring tokens leave no timer
// behind in the scheduler.
func TestNoTimerOutlivesItsSocket(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) { c.ExpireSockets = true })
	for range 50 {
		w, _ := st.mustConnect("exp", "")
		_ = w.c.Close()
	}
	eventually(t, 5*time.Second, func() bool { return st.gw.hub.count() == 0 && st.gw.sched.Len() == 0 }, "scheduler empty once every engine closed")
}

// A poll sent right after `2probe` and `5` on the WebSocket must get 400,
// as after the upgrade (it sometimes got 200 when it overtook the `5`).
func TestPollRightAfterUpgradeGets400(t *testing.T) {
	st := newStack(t)
	for i := range 20 {
		p := st.poller()
		p.connect(st.token(fmt.Sprintf("up%d", i)))
		c := probeWS(t, st.gw.Addr().String(), p.sid)
		must(t, c.WriteMessage(websocket.TextMessage, []byte("5")))
		if status, body := p.do(http.MethodGet, "", nil); status != 400 {
			t.Fatalf("run %d: poll right after the upgrade: %d %q", i, status, body)
		}
		_ = c.Close()
	}
}

// Limits agree end to end: a gateway whose max_payload does not fit the
// NATS server's refuses to start; a binary event or ack that base64 makes
// larger than a NATS message gets a clear error (it was "Service
// unavailable", with nothing logged).
func TestPayloadLimitsAgreeWithNATS(t *testing.T) {
	srv := natstest.RunWith(t, func(o *server.Options) { o.MaxPayload = 64 << 10 })
	if _, err := Start(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), srv.Conn(t), DefaultConfig()); err == nil || !strings.Contains(err.Error(), "max_payload") {
		t.Fatalf("start with max_payload over the server's: %v", err)
	}
	st := newStackOn(t, srv, func(c *Config, _ *presencesvc.Config) {
		c.MaxPayload, c.SendQueueBytes = 56<<10, 1<<20
	})
	echo, _ := st.nc.Subscribe("sb.in.up", func(m *nats.Msg) { _ = m.Respond([]byte(`["ok"]`)) })
	defer echo.Unsubscribe()
	_ = st.nc.Flush()
	w, sid := st.mustConnect("big", "")
	w.send(`452-0["up",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]`)
	must(t, w.c.WriteMessage(websocket.BinaryMessage, make([]byte, 27<<10)))
	must(t, w.c.WriteMessage(websocket.BinaryMessage, make([]byte, 27<<10)))
	if got := w.expect("430"); got != `430[{"status":"error","message":"Payload too large"}]` {
		t.Fatalf("ack %q", got)
	}
	// An ack too large for NATS: the service gets an error at once.
	go func() {
		w.expect(`421["ask"`)
		w.send(`461-1[{"_placeholder":true,"num":0}]`)
		_ = w.c.WriteMessage(websocket.BinaryMessage, make([]byte, 50<<10))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := client.New(st.nc).EmitWithAck(ctx, sid, "ask", 1); natsx.CodeOf(err) != api.CodeTooLarge {
		t.Fatalf("oversized ack: %v", err)
	}
}

// An upgrade whose `5` never comes (here: the client stops after the
// probe) is given up after upgrade_timeout: the WebSocket is closed, the
// session goes on polling and may upgrade again.
func TestUpgradeTimesOut(t *testing.T) {
	st := newStack(t, func(c *Config, _ *presencesvc.Config) { c.UpgradeTimeout = 300 * time.Millisecond })
	p := st.poller()
	sid := p.connect(st.token("upg"))
	c := probeWS(t, st.gw.Addr().String(), p.sid)
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	start := time.Now()
	if _, _, err := c.ReadMessage(); err == nil {
		t.Fatal("the stalled upgrade's WebSocket was not closed")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("closed after %s", d)
	}
	must(t, client.New(st.nc).NotifyConn(sid, "still", "polling"))
	if got := p.getSkipping(); len(got) == 0 || got[len(got)-1] != `42["still","polling"]` {
		t.Fatalf("poll after the failed upgrade: %q", got)
	}
	probeWS(t, st.gw.Addr().String(), p.sid) // a new upgrade may start
}
