// Command echo runs the example echo service against a NATS server.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/switchboard-rt/switchboard/pkg/boot"
	"github.com/switchboard-rt/switchboard/services/echo/echosvc"
)

type appConfig struct {
	NATS boot.NATSConfig `koanf:"nats"`
	Log  boot.LogConfig  `koanf:"log"`
}

func main() {
	cfg := appConfig{NATS: boot.DefaultNATS(), Log: boot.DefaultLog()}
	os.Exit(boot.Main("echo", os.Stderr, func() (*slog.Logger, error) {
		return boot.Load("echo", &cfg, &cfg.Log, os.Args[1:], os.Environ(), os.Stderr)
	}, func(ctx context.Context, log *slog.Logger) error { return run(ctx, log, cfg) }))
}

func run(ctx context.Context, log *slog.Logger, cfg appConfig) error {
	nc, err := cfg.NATS.Connect(ctx, log, "switchboard-echo")
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
