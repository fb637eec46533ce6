package gateway

import (
	"bytes"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/client"
	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
)

// BenchmarkClientEventToNATS: a WebSocket client emits events; a NATS
// subscriber receives them on sb.in.<event>.
func BenchmarkClientEventToNATS(b *testing.B) {
	st := newStack(b)
	var got atomic.Int64
	all := make(chan struct{})
	n := int64(b.N)
	sub, _ := st.nc.Subscribe("sb.in.chat", func(*nats.Msg) {
		if got.Add(1) == n {
			close(all)
		}
	})
	defer sub.Unsubscribe()
	_ = st.nc.Flush()
	w, _ := st.mustConnect("bench", "")
	frame := []byte(`42["chat",{"text":"hello","n":1}]`)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := w.c.WriteMessage(websocket.TextMessage, frame); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-all:
	case <-time.After(30 * time.Second):
		b.Fatalf("received %d of %d", got.Load(), b.N)
	}
}

// BenchmarkHandshake: WebSocket open, CONNECT with a JWT, auth verify and
// presence admit over NATS, `40` reply, close and release.
func BenchmarkHandshake(b *testing.B) {
	st := newStack(b)
	tok := st.token("hs")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, _, err := websocket.DefaultDialer.Dial(st.url(""), nil)
		if err != nil {
			b.Fatal(err)
		}
		_, _, _ = c.ReadMessage()
		_ = c.WriteMessage(websocket.TextMessage, []byte(`40{"token":"`+tok+`"}`))
		_, msg, err := c.ReadMessage()
		if err != nil || msg[1] != '0' {
			b.Fatalf("connect %d: %q %v", i, msg, err)
		}
		_ = c.Close()
		// Wait for the slot to come back before the next connect.
		for len(st.presenceList("hs")) >= 3 {
			time.Sleep(time.Millisecond)
		}
	}
}

// BenchmarkDelivery: a service publishes on sb.out.conn.<sid>; the gateway
// writes the event to a WebSocket client that reads it (one op is one event
// end to end), while `idle` other users' sockets are connected to the same
// gateway: the cost per event must not grow with them (interest-based
// subscriptions, no scan of all sockets).
func BenchmarkDelivery(b *testing.B) {
	for _, idle := range []int{0, 1000, 5000} {
		b.Run(fmt.Sprintf("idle=%d", idle), func(b *testing.B) {
			st := newStack(b, func(c *Config, _ *presencesvc.Config) { c.PingInterval = time.Hour })
			for i := 0; i < idle; i++ {
				st.mustConnectQuiet(fmt.Sprintf("idle-%d", i))
			}
			w, sid := st.mustConnect("target", "")
			_, _ = w.skipUpdates(200 * time.Millisecond)
			deliverWindowed(b, st, w, sid)
		})
	}
}

// deliverWindowed publishes b.N events to one socket and waits until the
// client has read them, with at most 128 in flight: the socket's send queue
// is bounded (256) and overflowing it disconnects the client by design.
func deliverWindowed(b *testing.B, st *stack, w *wsClient, sid string) {
	cl := client.New(st.nc)
	payload := map[string]any{"text": "hello", "n": 1}
	b.ReportAllocs()
	b.ResetTimer()
	window := make(chan struct{}, 128)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < b.N; i++ {
			if _, err := w.skipUpdates(10 * time.Second); err != nil {
				b.Errorf("read %d: %v", i, err)
				return
			}
			<-window
		}
	}()
	for i := 0; i < b.N; i++ {
		window <- struct{}{}
		if err := cl.NotifyConn(sid, "msg", payload); err != nil {
			b.Fatal(err)
		}
	}
	<-done
}

// mustConnectQuiet opens a connected socket whose frames nobody reads
// (an idle client), without the test client's reader goroutine.
func (st *stack) mustConnectQuiet(uid string) {
	st.t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(st.url(""), nil)
	if err != nil {
		st.t.Fatal(err)
	}
	st.t.Cleanup(func() { _ = c.Close() })
	_, _, _ = c.ReadMessage()
	_ = c.WriteMessage(websocket.TextMessage, []byte(`40{"token":"`+st.token(uid)+`"}`))
	if _, msg, err := c.ReadMessage(); err != nil || msg[1] != '0' {
		st.t.Fatalf("connect %s: %q %v", uid, msg, err)
	}
}

// BenchmarkHandshakeParallel: as BenchmarkHandshake with many clients at
// once (distinct users), the reconnect-storm case.
func BenchmarkHandshakeParallel(b *testing.B) {
	st := newStack(b)
	var n atomic.Int64
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		tok := st.token(fmt.Sprintf("hsp-%d", n.Add(1)))
		for pb.Next() {
			c, _, err := websocket.DefaultDialer.Dial(st.url(""), nil)
			if err != nil {
				b.Error(err)
				return
			}
			_, _, _ = c.ReadMessage()
			_ = c.WriteMessage(websocket.TextMessage, []byte(`40{"token":"`+tok+`"}`))
			_, msg, err := c.ReadMessage()
			for err == nil && len(msg) > 1 && msg[1] == '2' { // connections update
				_, msg, err = c.ReadMessage()
			}
			if err != nil || len(msg) < 2 || msg[1] != '0' {
				b.Errorf("connect: %q %v", msg, err)
			}
			_ = c.Close()
			time.Sleep(5 * time.Millisecond) // let the release land before reconnecting
		}
	})
}

// BenchmarkBroadcast publishes b.N broadcasts to 200 connected clients that
// read everything, at most 32 broadcasts in flight (the send queues are
// bounded): the fan-out's cost per delivery, encoded once per broadcast.
func BenchmarkBroadcast(b *testing.B) {
	const conns = 200
	st := newStack(b, func(c *Config, _ *presencesvc.Config) { c.PingInterval = time.Hour })
	var got atomic.Int64
	for i := range conns {
		c, _, err := websocket.DefaultDialer.Dial(st.url(""), nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Close() })
		_, _, _ = c.ReadMessage()
		_ = c.WriteMessage(websocket.TextMessage, []byte(`40{"token":"`+st.token(fmt.Sprintf("user-%d", i))+`"}`))
		if _, msg, err := c.ReadMessage(); err != nil || msg[1] != '0' {
			b.Fatalf("connect: %q %v", msg, err)
		}
		go func() {
			for {
				if _, msg, err := c.ReadMessage(); err != nil {
					return
				} else if bytes.HasPrefix(msg, []byte(`42["news"`)) {
					got.Add(1)
				}
			}
		}()
	}
	cl := client.New(st.nc)
	payload := map[string]any{"text": "hello", "n": 1}
	wait := func(n int64) {
		for deadline := time.Now().Add(20 * time.Second); got.Load() < n; time.Sleep(100 * time.Microsecond) {
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d deliveries", got.Load(), n)
			}
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if i >= 32 {
			wait(int64(i-32) * conns)
		}
		if err := cl.Broadcast("news", payload); err != nil {
			b.Fatal(err)
		}
	}
	wait(int64(b.N) * conns)
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*conns), "ns/delivery")
}
