// Command gateway serves Socket.IO clients over WebSocket and moves their
// frames to and from NATS.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/boot"
	"github.com/switchboard-rt/switchboard/pkg/config"
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
	log, _, err := boot.Init("gateway", &cfg, &cfg.Log, os.Args[1:], os.Environ(), os.Stderr)
	if config.IsHelp(err) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log, cfg); err != nil {
		log.Error("gateway stopped", "err", err)
		os.Exit(1)
	}
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
