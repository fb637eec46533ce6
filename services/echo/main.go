// Command echo runs the example echo service against a NATS server.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/switchboard-rt/switchboard/pkg/boot"
	"github.com/switchboard-rt/switchboard/pkg/config"
	"github.com/switchboard-rt/switchboard/services/echo/echosvc"
)

type appConfig struct {
	NATS boot.NATSConfig `koanf:"nats"`
	Log  boot.LogConfig  `koanf:"log"`
}

func main() {
	cfg := appConfig{NATS: boot.DefaultNATS(), Log: boot.DefaultLog()}
	log, _, err := boot.Init("echo", &cfg, &cfg.Log, os.Args[1:], os.Environ(), os.Stderr)
	if config.IsHelp(err) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log, cfg); err != nil {
		log.Error("echo stopped", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, cfg appConfig) error {
	nc, err := cfg.NATS.Connect(log, "switchboard-echo")
	if err != nil {
		return err
	}
	defer cfg.NATS.Drain(nc)
	svc, err := echosvc.Start(log, nc)
	if err != nil {
		return fmt.Errorf("start echo: %w", err)
	}
	<-ctx.Done()
	return svc.Stop()
}
