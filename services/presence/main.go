// Command presence runs Switchboard's presence service: connection slots
// per user, the `connections` event, disconnectRequest and the purge of dead
// gateways.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/switchboard-rt/switchboard/pkg/boot"
	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
)

type mainConfig struct {
	NATS     boot.NATSConfig    `koanf:"nats"`
	Log      boot.LogConfig     `koanf:"log"`
	Presence presencesvc.Config `koanf:"presence"`
}

func defaultConfig() mainConfig {
	return mainConfig{
		NATS:     boot.DefaultNATS(),
		Log:      boot.DefaultLog(),
		Presence: presencesvc.DefaultConfig(),
	}
}

func main() {
	cfg := defaultConfig()
	os.Exit(boot.Main("presence", os.Stderr, func() (*slog.Logger, error) {
		return boot.Load("presence", &cfg, &cfg.Log, os.Args[1:], os.Environ(), os.Stderr)
	}, func(ctx context.Context, log *slog.Logger) error { return run(ctx, log, cfg) }))
}

// run serves until ctx ends.
func run(ctx context.Context, log *slog.Logger, cfg mainConfig) error {
	nc, err := cfg.NATS.Connect(log, presencesvc.ServiceName)
	if err != nil {
		return err
	}
	defer cfg.NATS.Drain(nc)
	svc, err := presencesvc.Start(ctx, log, nc, cfg.Presence)
	if err != nil {
		return fmt.Errorf("start presence: %w", err)
	}
	log.Info("presence ready", "bucket", cfg.Presence.Bucket)
	<-ctx.Done()
	log.Info("stopping")
	if err := svc.Stop(); err != nil {
		return fmt.Errorf("stop presence: %w", err)
	}
	return nil
}
