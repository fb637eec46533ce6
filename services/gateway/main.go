// Command gateway serves Socket.IO clients over WebSocket and moves their
// frames to and from NATS.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/boot"
	"github.com/switchboard-rt/switchboard/pkg/ops"
	"github.com/switchboard-rt/switchboard/services/gateway/gateway"
)

type appConfig struct {
	NATS    boot.NATSConfig `koanf:"nats"`
	Log     boot.LogConfig  `koanf:"log"`
	Gateway gateway.Config  `koanf:"gateway"`
	Ops     ops.Config      `koanf:"ops"`
	// DrainTimeout bounds the graceful shutdown.
	DrainTimeout time.Duration `koanf:"drain_timeout"`
}

// opsListen is the default address of /metrics, /healthz and /readyz.
const opsListen = ":9190"

func defaultConfig() appConfig {
	return appConfig{NATS: boot.DefaultNATS(), Log: boot.DefaultLog(), Gateway: gateway.DefaultConfig(), DrainTimeout: 10 * time.Second, Ops: ops.DefaultConfig(opsListen)}
}

func main() {
	cfg := defaultConfig()
	if boot.IsHealth(os.Args[1:]) {
		os.Exit(boot.Health("gateway", &cfg, &cfg.Ops, os.Args[2:], os.Environ(), os.Stderr))
	}
	os.Exit(boot.Main("gateway", os.Stderr, func() (*slog.Logger, error) {
		return boot.Load("gateway", &cfg, &cfg.Log, os.Args[1:], os.Environ(), os.Stderr)
	}, func(ctx context.Context, log *slog.Logger) error { return run(ctx, log, cfg) }))
}

func run(ctx context.Context, log *slog.Logger, cfg appConfig) error {
	nc, err := cfg.NATS.Connect(ctx, log, gateway.ServiceName)
	if err != nil {
		return err
	}
	defer cfg.NATS.Drain(nc)
	g, err := gateway.Start(ctx, log, nc, cfg.Gateway)
	if err != nil {
		return fmt.Errorf("start gateway: %w", err)
	}
	reg := ops.NewRegistry()
	reg.MustRegister(g.Collectors()...)
	osrv, err := ops.Start(log, cfg.Ops, reg, ops.NATSConnected(nc))
	if err == nil {
		<-ctx.Done()
		log.Info("draining")
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	defer cancel()
	if err != nil {
		return errors.Join(err, g.Stop(sctx))
	}
	return errors.Join(g.Stop(sctx), boot.StopOps(osrv))
}
