// Command presence runs Switchboard's presence service: connection slots
// per user, the `connections` event, disconnectRequest and the purge of dead
// gateways.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/switchboard-rt/switchboard/pkg/boot"
	"github.com/switchboard-rt/switchboard/pkg/ops"
	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
)

type mainConfig struct {
	NATS     boot.NATSConfig    `koanf:"nats"`
	Log      boot.LogConfig     `koanf:"log"`
	Presence presencesvc.Config `koanf:"presence"`
	Ops      ops.Config         `koanf:"ops"`
	// Provision creates or updates the bucket, then exits (run it with a
	// NATS user allowed to manage streams; the service's own user then
	// needs no such right).
	Provision bool `koanf:"provision"`
}

func defaultConfig() mainConfig {
	return mainConfig{
		NATS:     boot.DefaultNATS(),
		Log:      boot.DefaultLog(),
		Presence: presencesvc.DefaultConfig(),
		Ops:      ops.DefaultConfig(opsListen),
	}
}

// opsListen is the default address of /metrics, /healthz and /readyz.
const opsListen = ":9192"

func main() {
	cfg := defaultConfig()
	if boot.IsHealth(os.Args[1:]) {
		os.Exit(boot.Health("presence", &cfg, &cfg.Ops, os.Args[2:], os.Environ(), os.Stderr))
	}
	os.Exit(boot.Main("presence", os.Stderr, func() (*slog.Logger, error) {
		return boot.Load("presence", &cfg, &cfg.Log, os.Args[1:], os.Environ(), os.Stderr)
	}, func(ctx context.Context, log *slog.Logger) error { return run(ctx, log, cfg) }))
}

// run serves until ctx ends.
func run(ctx context.Context, log *slog.Logger, cfg mainConfig) error {
	nc, err := cfg.NATS.Connect(ctx, log, presencesvc.ServiceName)
	if err != nil {
		return err
	}
	defer cfg.NATS.Drain(nc)
	if cfg.Provision {
		if err := presencesvc.Provision(ctx, nc, cfg.Presence); err != nil {
			return fmt.Errorf("provision: %w", err)
		}
		log.Info("provisioned", "bucket", cfg.Presence.Bucket)
		return nil
	}
	svc, err := boot.Start(ctx, log, func(ctx context.Context) (*presencesvc.Service, error) {
		return presencesvc.Start(ctx, log, nc, cfg.Presence)
	})
	if err != nil {
		return fmt.Errorf("start presence: %w", err)
	}
	reg := ops.NewRegistry()
	reg.MustRegister(svc.Collectors()...)
	osrv, err := ops.Start(log, cfg.Ops, reg, ops.NATSConnected(nc), ops.KVReachable(nc, cfg.Presence.Bucket))
	if err != nil {
		return errors.Join(err, svc.Stop())
	}
	log.Info("presence ready", "bucket", cfg.Presence.Bucket)
	<-ctx.Done()
	log.Info("stopping")
	if err := svc.Stop(); err != nil {
		return errors.Join(fmt.Errorf("stop presence: %w", err), boot.StopOps(osrv))
	}
	return boot.StopOps(osrv)
}
