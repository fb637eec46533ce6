package load_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/services/devstack/devstack"
	"github.com/switchboard-rt/switchboard/services/devstack/load"
)

// Every scenario runs, small, against a development stack in this process,
// and reports what it measured: every delivery arrived and every timer
// ended once.
func TestScenarios(t *testing.T) {
	cfg := devstack.DefaultConfig()
	cfg.NATSServer.Listen = "127.0.0.1:0"
	cfg.NATSServer.StoreDir = t.TempDir()
	cfg.Gateway.Listen = "127.0.0.1:0"
	cfg.Ops.Listen = ""
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := devstack.Start(context.Background(), log, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = st.Stop(ctx)
	})
	nc, err := nats.Connect(st.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	target := load.Target{
		URL: "http://" + st.GatewayAddr().String(), NATS: nc, PID: os.Getpid(), Log: log,
		Token: func(uid string) (string, error) { return devstack.MintToken(uid, time.Hour, nil) },
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("idle", func(t *testing.T) {
		r, err := load.Idle(ctx, target, 50, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if r.Metrics["rss_per_conn_kib"] == 0 || r.Metrics["connect_per_s"] <= 0 {
			t.Fatalf("idle measured nothing: %v", r.Metrics)
		}
	})
	t.Run("handshake", func(t *testing.T) {
		r, err := load.Handshake(ctx, target, 4, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if r.Metrics["per_s"] < 10 || r.Metrics["errors"] != 0 || r.Metrics["p99_ms"] <= 0 {
			t.Fatalf("handshake: %v", r.Metrics)
		}
	})
	step := load.StepOptions{Start: 100, Limit: 200, Step: 500 * time.Millisecond, P99: time.Second}
	t.Run("notify", func(t *testing.T) {
		r, steps, err := load.Notify(ctx, target, 20, step)
		if err != nil {
			t.Fatal(err)
		}
		if r.Metrics["max_rate"] != 200 || len(steps) != 2 || steps[1].Metrics["lost"] != 0 {
			t.Fatalf("notify: %v, steps %v", r.Metrics, steps)
		}
	})
	t.Run("broadcast", func(t *testing.T) {
		r, steps, err := load.Broadcast(ctx, target, 20, load.StepOptions{Start: 10, Limit: 20, Step: 500 * time.Millisecond, P99: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if r.Metrics["max_deliveries_per_s"] != 400 || steps[len(steps)-1].Metrics["lost"] != 0 {
			t.Fatalf("broadcast: %v, steps %v", r.Metrics, steps)
		}
	})
	t.Run("timers", func(t *testing.T) {
		r, err := load.Timers(ctx, target, 20, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"missing", "repeated", "wrong", "no_done", "extra_done", "after_done"} {
			if r.Metrics[k] != 0 {
				t.Errorf("%s = %v", k, r.Metrics[k])
			}
		}
		if r.Metrics["first_p99_ms"] <= 0 || r.Metrics["first_p99_ms"] > 1000 {
			t.Errorf("first tick p99 %v ms", r.Metrics["first_p99_ms"])
		}
	})
}
