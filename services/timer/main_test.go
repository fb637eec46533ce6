package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/ops/opstest"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

func TestLoad(t *testing.T) {
	_, cfg, err := load([]string{"-timer.lease_ttl=2s"}, []string{"SB_TIMER_MAX_TIMERS_PER_USER=3", "SB_NATS_URL=nats://x:1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Timer.LeaseTTL != 2*time.Second || cfg.Timer.MaxTimersPerUser != 3 || cfg.NATS.URL != "nats://x:1" || cfg.Timer.Bucket != "sb_timers" {
		t.Fatalf("config %+v", cfg)
	}
	for _, env := range [][]string{{"SB_TIMER_NOPE=1"}, {"SB_TIMER_LEASE_TTL=soon"}} {
		if _, _, err := load(nil, env, io.Discard); err == nil {
			t.Errorf("%v accepted", env)
		}
	}
	if _, _, err := load([]string{"extra"}, nil, io.Discard); err == nil {
		t.Error("stray argument accepted")
	}
}

// run serves timers until its context ends, then returns cleanly.
func TestRun(t *testing.T) {
	s := natstest.Run(t)
	nc := s.Conn(t)
	cfg := DefaultConfig()
	cfg.NATS.URL = s.URL()
	cfg.Ops.Listen = fmt.Sprintf("127.0.0.1:%d", natstest.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), cfg) }()

	ticks := make(chan *nats.Msg, 8)
	out, _ := subject.OutDevice("alice", "phone")
	if _, err := nc.ChanSubscribe(out, ticks); err != nil {
		t.Fatal(err)
	}
	in, _ := subject.In(api.EventTimerStart)
	m := nats.NewMsg(in)
	m.Header.Set(api.HeaderUser, "alice")
	m.Header.Set(api.HeaderDevice, "phone")
	m.Data = []byte(`[{"dur":2}]`)
	var reply *nats.Msg
	var err error
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(50 * time.Millisecond) {
		if reply, err = nc.RequestMsg(m, time.Second); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("timerStart: %v", err)
	}
	var ack []api.TimerStartAck
	if err := json.Unmarshal(reply.Data, &ack); err != nil || len(ack) != 1 || ack[0].Timer != 2 {
		t.Fatalf("ack %s", reply.Data)
	}
	select {
	case tick := <-ticks:
		if tick.Header.Get(api.HeaderEvent) != api.EventTick || string(tick.Data) != `{"timer":2}` {
			t.Fatalf("got %s %s", tick.Header.Get(api.HeaderEvent), tick.Data)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no tick")
	}
	// The metrics show the running timer, the ticks and the partitions.
	metrics := opstest.Scrape(t, cfg.Ops.Listen)
	for series, want := range map[string]float64{
		"switchboard_timer_active":                      1,
		"switchboard_timer_members":                     1,
		"switchboard_timer_tick_lateness_seconds_count": opstest.Value(metrics, "switchboard_timer_ticks_total"),
	} {
		if got := opstest.Value(metrics, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if p := opstest.Value(metrics, "switchboard_timer_partitions_owned"); p < 1 || p > float64(cfg.Timer.Partitions) {
		t.Errorf("partitions owned %v", p)
	}
	// The start went through a batch.
	if opstest.Value(metrics, "switchboard_timer_write_batches_total") < 1 || opstest.Value(metrics, "switchboard_timer_batched_changes_total") < 1 {
		t.Errorf("no batched change counted:\n%s", metrics)
	}
	if opstest.Value(metrics, "switchboard_timer_ticks_total") < 1 {
		t.Errorf("no tick counted:\n%s", metrics)
	}
	if code := opstest.Status(cfg.Ops.Listen, "/readyz"); code != 200 {
		t.Errorf("readyz %d", code)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return")
	}
}

// Started while JetStream has no quorum (two of three NATS nodes down, as
// when nodes restart during an election), run keeps trying instead of
// exiting, past the 30 s a bucket's opening waits by itself, and serves
// (`sb.timer.list` answers) once the nodes are back.
func TestRunWaitsForJetStream(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	c.WaitJetStream(30 * time.Second)
	c.Kill(1)
	c.Kill(2)
	cfg := DefaultConfig()
	cfg.NATS.URL = c.URL(0)
	cfg.Ops.Listen = ""
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), cfg) }()
	select {
	case err := <-done:
		t.Fatalf("run returned while JetStream had no quorum: %v", err)
	case <-time.After(35 * time.Second):
	}
	c.Restart(1)
	c.Restart(2)
	nc := c.Conn(t)
	deadline := time.Now().Add(45 * time.Second)
	for {
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		_, err := natsx.Request[api.TimerListReply](rctx, nc, subject.TimerListAPI, api.TimerListRequest{UserID: "alice"})
		rcancel()
		if err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run returned: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timer not serving after the nodes came back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return")
	}
}
