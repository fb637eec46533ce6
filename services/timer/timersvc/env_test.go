package timersvc

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// tol is the accepted distance between a tick and its place on the
// deadline grid.
const tol = 300 * time.Millisecond

func testLog(t testing.TB) *slog.Logger {
	if os.Getenv("TIMER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func testConfig() Config {
	c := DefaultConfig()
	c.Partitions = 8
	c.LeaseTTL = time.Second
	c.LeaseRenew = 200 * time.Millisecond
	return c
}

type env struct {
	srv *natstest.Server
	nc  *nats.Conn // the test's own connection (plays gateway and clients)
}

func newEnv(t *testing.T) *env {
	t.Helper()
	s := natstest.Run(t)
	return &env{srv: s, nc: s.Conn(t)}
}

// start runs a service instance on its own NATS connection.
func (e *env) start(t *testing.T, cfg Config) (*Service, *nats.Conn) {
	t.Helper()
	nc := e.srv.Conn(t)
	svc, err := Start(context.Background(), testLog(t), nc, cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		done := make(chan error, 1)
		go func() { done <- svc.Stop() }()
		select {
		case err := <-done:
			if err != nil && !nc.IsClosed() {
				t.Errorf("stop: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("stop did not return")
		}
	})
	return svc, nc
}

// startLeader starts an instance and waits until it drives every partition.
func (e *env) startLeader(t *testing.T, cfg Config) *Service {
	t.Helper()
	svc, _ := e.start(t, cfg)
	waitCovered(t, 5*time.Second, cfg.Partitions, svc)
	return svc
}

// covered reports whether svcs drive every one of n partitions, each
// partition once.
func covered(n int, svcs ...*Service) bool {
	seen := make(map[int]int, n)
	for _, s := range svcs {
		for _, p := range s.Status().Partitions {
			seen[p]++
		}
	}
	if len(seen) != n {
		return false
	}
	for _, c := range seen {
		if c != 1 {
			return false
		}
	}
	return true
}

// waitCovered waits until svcs drive every partition, each once, with
// every instance driving some.
func waitCovered(t *testing.T, within time.Duration, n int, svcs ...*Service) {
	t.Helper()
	waitFor(t, within, "partitions shared", func() bool {
		for _, s := range svcs {
			if len(s.Status().Partitions) == 0 {
				return false
			}
		}
		return covered(n, svcs...)
	})
}

// owner returns the instance of svcs driving uid's partition.
func owner(t *testing.T, n int, uid string, svcs ...*Service) *Service {
	t.Helper()
	p := PartitionOf(uid, n)
	for _, s := range svcs {
		if slices.Contains(s.Status().Partitions, p) {
			return s
		}
	}
	t.Fatalf("no instance drives partition %d", p)
	return nil
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// delivery is one event received on a delivery subject.
type delivery struct {
	event string
	data  []byte
	at    time.Time
}

func (d delivery) timer(t *testing.T) int {
	t.Helper()
	var v struct {
		Timer *int `json:"timer"`
	}
	if err := json.Unmarshal(d.data, &v); err != nil || v.Timer == nil {
		t.Fatalf("%s payload %s: want {\"timer\":n}", d.event, d.data)
	}
	return *v.Timer
}

// inbox records the deliveries of one subject.
type inbox struct {
	subj string
	ch   chan delivery
}

func (e *env) listen(t *testing.T, subj string) *inbox {
	t.Helper()
	in := &inbox{subj: subj, ch: make(chan delivery, 1024)}
	sub, err := e.nc.Subscribe(subj, func(m *nats.Msg) {
		in.ch <- delivery{event: m.Header.Get(api.HeaderEvent), data: m.Data, at: time.Now()}
	})
	if err != nil {
		t.Fatalf("subscribe %s: %v", subj, err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := e.nc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	return in
}

func (e *env) listenDevice(t *testing.T, uid, dev string) *inbox {
	t.Helper()
	subj, err := subject.OutDevice(uid, dev)
	if err != nil {
		t.Fatal(err)
	}
	return e.listen(t, subj)
}

func (e *env) listenConn(t *testing.T, sock string) *inbox {
	t.Helper()
	subj, err := subject.OutConn(sock)
	if err != nil {
		t.Fatal(err)
	}
	return e.listen(t, subj)
}

func (in *inbox) next(t *testing.T, within time.Duration) delivery {
	t.Helper()
	select {
	case d := <-in.ch:
		return d
	case <-time.After(within):
		t.Fatalf("%s: nothing within %s", in.subj, within)
		return delivery{}
	}
}

// expect returns the next delivery and checks its event name.
func (in *inbox) expect(t *testing.T, event string, within time.Duration) delivery {
	t.Helper()
	d := in.next(t, within)
	if d.event != event {
		t.Fatalf("%s: got %s %s, want %s", in.subj, d.event, d.data, event)
	}
	return d
}

func (in *inbox) none(t *testing.T, during time.Duration) {
	t.Helper()
	select {
	case d := <-in.ch:
		t.Fatalf("%s: unexpected %s %s", in.subj, d.event, d.data)
	case <-time.After(during):
	}
}

// who is the sender of a client event.
type who struct{ uid, dev, sock string }

func (e *env) eventMsg(t *testing.T, event string, w who, body string) *nats.Msg {
	t.Helper()
	subj, err := subject.In(event)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(subj)
	if w.uid != "" {
		m.Header.Set(api.HeaderUser, w.uid)
	}
	if w.dev != "" {
		m.Header.Set(api.HeaderDevice, w.dev)
	}
	if w.sock != "" {
		m.Header.Set(api.HeaderSocket, w.sock)
	}
	m.Header.Set(api.HeaderEvent, event)
	m.Data = []byte(body)
	return m
}

// send publishes a client event without ack.
func (e *env) send(t *testing.T, event string, w who, body string) {
	t.Helper()
	if err := e.nc.PublishMsg(e.eventMsg(t, event, w, body)); err != nil {
		t.Fatal(err)
	}
}

// request sends a client event with ack; it returns the ack arguments or
// the service error.
func (e *env) request(t *testing.T, event string, w who, body string) ([]json.RawMessage, *natsx.Error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply, err := e.nc.RequestMsgWithContext(ctx, e.eventMsg(t, event, w, body))
	if err != nil {
		t.Fatalf("%s: %v", event, err)
	}
	if se := natsx.ErrorFromMsg(reply); se != nil {
		return nil, se
	}
	var args []json.RawMessage
	if err := json.Unmarshal(reply.Data, &args); err != nil {
		t.Fatalf("%s ack %q: not an array: %v", event, reply.Data, err)
	}
	return args, nil
}

// ok sends an event with ack and decodes its single ack argument into v.
func (e *env) ok(t *testing.T, event string, w who, body string, v any) {
	t.Helper()
	args, se := e.request(t, event, w, body)
	if se != nil {
		t.Fatalf("%s %s: error %v", event, body, se)
	}
	if len(args) != 1 {
		t.Fatalf("%s: ack %d args, want 1", event, len(args))
	}
	var st api.Status
	if err := json.Unmarshal(args[0], &st); err != nil || st.Status != "ok" {
		t.Fatalf("%s: ack %s, want status ok", event, args[0])
	}
	if v != nil {
		if err := json.Unmarshal(args[0], v); err != nil {
			t.Fatalf("%s: decode ack %s: %v", event, args[0], err)
		}
	}
}

func (e *env) startTimer(t *testing.T, w who, dur int) {
	t.Helper()
	var ack api.TimerStartAck
	e.ok(t, api.EventTimerStart, w, fmt.Sprintf(`[{"dur":%d}]`, dur), &ack)
	if ack.Timer != dur {
		t.Fatalf("timerStart ack %+v, want timer %d", ack, dur)
	}
}

func (e *env) timers(t *testing.T, w who) []api.TimerInfo {
	t.Helper()
	var ack api.TimerListAck
	e.ok(t, api.EventTimerList, w, `[]`, &ack)
	return ack.Timers
}

// deadline is the deadline of w's running timer.
func (e *env) deadline(t *testing.T, w who) time.Time {
	t.Helper()
	for _, ti := range e.timers(t, w) {
		if ti.DeviceID == w.dev {
			return ti.Deadline
		}
	}
	t.Fatalf("no timer for device %s", w.dev)
	return time.Time{}
}

// onGrid checks that tick d carries r and arrived at deadline - r s.
func onGrid(t *testing.T, d delivery, deadline time.Time, r int) {
	t.Helper()
	if d.event != api.EventTick {
		t.Fatalf("got %s %s, want tick %d", d.event, d.data, r)
	}
	if got := d.timer(t); got != r {
		t.Fatalf("tick %d, want %d", got, r)
	}
	want := deadline.Add(-time.Duration(r) * time.Second)
	if off := d.at.Sub(want); off < -tol || off > tol {
		t.Fatalf("tick %d arrived %s off its due time", r, off)
	}
}

// countdown expects ticks from..0 on the deadline grid, then timerDone.
func countdown(t *testing.T, in *inbox, deadline time.Time, from, dur int, dev string) {
	t.Helper()
	for r := from; r >= 0; r-- {
		onGrid(t, in.next(t, 2*time.Second), deadline, r)
	}
	d := in.expect(t, api.EventTimerDone, time.Second)
	var done api.TimerDone
	if err := json.Unmarshal(d.data, &done); err != nil {
		t.Fatal(err)
	}
	if want := (api.TimerDone{Timer: 0, DeviceID: dev, Dur: dur}); done != want {
		t.Fatalf("timerDone %+v, want %+v", done, want)
	}
	if !strings.Contains(string(d.data), `"timer":0`) {
		t.Fatalf("timerDone %s lacks timer 0", d.data)
	}
}
