package ops_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/ops"
	"github.com/switchboard-rt/switchboard/pkg/ops/opstest"
)

func start(t *testing.T, reg prometheus.Gatherer, checks ...ops.Check) *ops.Server {
	t.Helper()
	s, err := ops.Start(slog.New(slog.DiscardHandler), ops.DefaultConfig("127.0.0.1:0"), reg, checks...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	return s
}

// Readiness is the conjunction of the checks; liveness needs none.
func TestReadiness(t *testing.T) {
	var broken atomic.Bool
	s := start(t, ops.NewRegistry(), ops.Check{Name: "thing", Fn: func(context.Context) error {
		if broken.Load() {
			return errors.New("thing broke")
		}
		return nil
	}})
	addr := s.Addr().String()
	if got := opstest.Status(addr, "/readyz"); got != 200 {
		t.Fatalf("readyz %d", got)
	}
	broken.Store(true)
	if got := opstest.Status(addr, "/readyz"); got != 503 {
		t.Fatalf("readyz %d with a failing check", got)
	}
	if got := opstest.Status(addr, "/healthz"); got != 200 {
		t.Fatalf("healthz %d", got)
	}
	err := ops.Probe(context.Background(), addr, "/readyz")
	if err == nil || !strings.Contains(err.Error(), "thing broke") {
		t.Fatalf("probe: %v", err)
	}
	broken.Store(false)
	if err := ops.Probe(context.Background(), addr, "/readyz"); err != nil {
		t.Fatalf("probe: %v", err)
	}
}

// A check that hangs is cut at check_timeout and counts as failed.
func TestSlowCheckTimesOut(t *testing.T) {
	cfg := ops.DefaultConfig("127.0.0.1:0")
	cfg.CheckTimeout = 100 * time.Millisecond
	s, err := ops.Start(slog.New(slog.DiscardHandler), cfg, ops.NewRegistry(), ops.Check{Name: "slow", Fn: func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())
	begin := time.Now()
	if got := opstest.Status(s.Addr().String(), "/readyz"); got != 503 {
		t.Fatalf("readyz %d", got)
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Fatalf("readyz took %v", d)
	}
}

// NATS and KV checks follow the server.
func TestNATSAndKVChecks(t *testing.T) {
	srv := natstest.Run(t)
	nc := srv.Conn(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "present"}); err != nil {
		t.Fatal(err)
	}
	s := start(t, ops.NewRegistry(), ops.NATSConnected(nc), ops.KVReachable(nc, "absent"), ops.KVReachable(nc, "present"))
	failed := s.Ready(context.Background())
	if _, ok := failed["nats"]; ok || failed["kv absent"] == "" || failed["kv present"] != "" {
		t.Fatalf("failed %v: want only the missing bucket", failed)
	}
	srv.Down()
	deadline := time.Now().Add(5 * time.Second)
	for s.Ready(context.Background())["nats"] == "" {
		if time.Now().After(deadline) {
			t.Fatal("nats check still passes with the server down")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Metrics are served in the Prometheus text format.
func TestMetrics(t *testing.T) {
	reg := ops.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "things_total", Help: "Things."})
	reg.MustRegister(c)
	c.Add(3)
	s := start(t, reg)
	text := opstest.Scrape(t, s.Addr().String())
	if v := opstest.Value(text, "things_total"); v != 3 {
		t.Fatalf("things_total = %v in\n%s", v, text)
	}
	if opstest.Value(text, "go_goroutines") <= 0 || opstest.Value(text, "process_resident_memory_bytes") <= 0 {
		t.Fatal("no runtime or process series")
	}
}

func TestListenBusyAndEmpty(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := ops.Start(slog.New(slog.DiscardHandler), ops.DefaultConfig(ln.Addr().String()), ops.NewRegistry()); err == nil || !strings.Contains(err.Error(), "ops.listen") {
		t.Fatalf("busy: %v", err)
	}
	s, err := ops.Start(slog.New(slog.DiscardHandler), ops.DefaultConfig(""), ops.NewRegistry())
	if err != nil || s.Addr() != nil {
		t.Fatalf("empty listen: %v %v", s.Addr(), err)
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestProbeAddr(t *testing.T) {
	for in, want := range map[string]string{
		":9190":          "127.0.0.1:9190",
		"0.0.0.0:1":      "127.0.0.1:1",
		"[::]:2":         "[::1]:2",
		"10.0.0.5:3":     "10.0.0.5:3",
		"localhost:4":    "localhost:4",
		"127.0.0.1:9191": "127.0.0.1:9191",
	} {
		got, err := ops.ProbeAddr(in)
		if err != nil || got != want {
			t.Errorf("ProbeAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ops.ProbeAddr("nope"); err == nil {
		t.Error("an address without a port accepted")
	}
	if err := ops.Probe(context.Background(), fmt.Sprintf("127.0.0.1:%d", natstest.FreePort(t)), "/readyz"); err == nil {
		t.Error("probe of a closed port succeeded")
	}
}

// Profiles are served only when asked for.
func TestPprof(t *testing.T) {
	for _, on := range []bool{false, true} {
		t.Run(fmt.Sprint(on), func(t *testing.T) {
			cfg := ops.DefaultConfig("127.0.0.1:0")
			cfg.Pprof = on
			s, err := ops.Start(slog.New(slog.DiscardHandler), cfg, ops.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Stop(context.Background()) })
			want := 404
			if on {
				want = 200
			}
			for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/heap"} {
				if got := opstest.Status(s.Addr().String(), path); got != want {
					t.Errorf("%s: %d, want %d", path, got, want)
				}
			}
		})
	}
}
