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
	"github.com/switchboard-rt/switchboard/pkg/boot/boottest"
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
	svc := boottest.Start(t, func(ctx context.Context) error {
		return run(ctx, slog.New(slog.DiscardHandler), cfg)
	})

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
	svc.Stop()
}

// Started while JetStream has no quorum, run keeps trying instead of
// exiting, and serves (`sb.timer.list` answers) once the nodes are back.
func TestRunWaitsForJetStream(t *testing.T) {
	boottest.WaitsForJetStream(t, func(ctx context.Context, url string) error {
		cfg := DefaultConfig()
		cfg.NATS.URL = url
		cfg.Ops.Listen = ""
		return run(ctx, slog.New(slog.DiscardHandler), cfg)
	}, func(ctx context.Context, nc *nats.Conn) error {
		_, err := natsx.Request[api.TimerListReply](ctx, nc, subject.TimerListAPI, api.TimerListRequest{UserID: "alice"})
		return err
	})
}
