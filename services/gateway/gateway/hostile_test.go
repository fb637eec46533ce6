package gateway

// Regression tests for inputs a hostile client can send: each must get a
// defined answer without crashing the gateway, without unbounded memory or
// time, and without affecting other connections.

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/switchboard-rt/switchboard/pkg/client"
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
