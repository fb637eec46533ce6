// Command gateway serves Socket.IO clients over WebSocket and moves their
// frames to and from NATS.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/boot"
	"github.com/switchboard-rt/switchboard/services/gateway/gateway"
)

type appConfig struct {
	NATS    boot.NATSConfig `koanf:"nats"`
	Log     boot.LogConfig  `koanf:"log"`
	Gateway gateway.Config  `koanf:"gateway"`
	// DrainTimeout bounds the graceful shutdown.
	DrainTimeout time.Duration `koanf:"drain_timeout"`
}

func main() {
	cfg := appConfig{NATS: boot.DefaultNATS(), Log: boot.DefaultLog(), Gateway: gateway.DefaultConfig(), DrainTimeout: 10 * time.Second}
	os.Exit(boot.Main("gateway", os.Stderr, func() (*slog.Logger, error) {
		return boot.Load("gateway", &cfg, &cfg.Log, os.Args[1:], os.Environ(), os.Stderr)
	}, func(ctx context.Context, log *slog.Logger) error { return run(ctx, log, cfg) }))
}

func run(ctx context.Context, log *slog.Logger, cfg appConfig) error {
	nc, err := cfg.NATS.Connect(log, "switchboard-gateway")
	if err != nil {
		return err
	}
	defer cfg.NATS.Drain(nc)
	g, err := gateway.Start(ctx, log, nc, cfg.Gateway)
	if err != nil {
		return fmt.Errorf("start gateway: %w", err)
	}
	<-ctx.Done()
	log.Info("draining")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	defer cancel()
	return g.Stop(sctx)
}
