// Command timer runs Switchboard's timer service: per-device countdown
// timers started by clients (timerStart, timerStop, timerList), stored in
// JetStream KV and ticked once per second by the instance holding the tick
// lease.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/boot"
	"github.com/switchboard-rt/switchboard/pkg/ops"
	"github.com/switchboard-rt/switchboard/services/timer/timersvc"
)

// Config is the timer binary's configuration.
type Config struct {
	NATS  boot.NATSConfig `koanf:"nats"`
	Log   boot.LogConfig  `koanf:"log"`
	Timer timersvc.Config `koanf:"timer"`
	// Provision creates or updates the bucket and the events stream, then
	// exits (run it with a NATS user allowed to manage streams; the
	// service's own user then needs no such right).
	Provision bool       `koanf:"provision"`
	Ops       ops.Config `koanf:"ops"`
}

// opsListen is the default address of /metrics, /healthz and /readyz.
const opsListen = ":9193"

// DefaultConfig returns the binary's defaults.
func DefaultConfig() Config {
	return Config{NATS: boot.DefaultNATS(), Log: boot.DefaultLog(), Timer: timersvc.DefaultConfig(), Ops: ops.DefaultConfig(opsListen)}
}

func main() {
	if boot.IsHealth(os.Args[1:]) {
		cfg := DefaultConfig()
		os.Exit(boot.Health("timer", &cfg, &cfg.Ops, os.Args[2:], os.Environ(), os.Stderr))
	}
	var cfg Config
	os.Exit(boot.Main("timer", os.Stderr, func() (*slog.Logger, error) {
		log, c, err := load(os.Args[1:], os.Environ(), os.Stderr)
		cfg = c
		return log, err
	}, func(ctx context.Context, log *slog.Logger) error { return run(ctx, log, cfg) }))
}

// load reads the configuration and builds the logger.
func load(args, environ []string, out io.Writer) (*slog.Logger, Config, error) {
	cfg := DefaultConfig()
	log, err := boot.Load("timer", &cfg, &cfg.Log, args, environ, out)
	return log, cfg, err
}

// run serves until ctx is done, then stops (releasing the tick lease) and
// drains.
func run(ctx context.Context, log *slog.Logger, cfg Config) error {
	// No publish is held back while the connection is down: a tick buffered
	// then would go out after the reconnect, possibly after another
	// instance took the partition over and sent its own.
	nc, err := cfg.NATS.Connect(ctx, log, timersvc.ServiceName, nats.ReconnectBufSize(-1))
	if err != nil {
		return err
	}
	defer cfg.NATS.Drain(nc)
	if cfg.Provision {
		if err := timersvc.Provision(ctx, nc, cfg.Timer); err != nil {
			return fmt.Errorf("provision: %w", err)
		}
		log.Info("provisioned", "bucket", cfg.Timer.Bucket, "stream", cfg.Timer.EventsStream)
		return nil
	}
	svc, err := boot.Start(ctx, log, func(ctx context.Context) (*timersvc.Service, error) {
		return timersvc.Start(ctx, log, nc, cfg.Timer)
	})
	if err != nil {
		return err
	}
	reg := ops.NewRegistry()
	reg.MustRegister(svc.Collectors()...)
	osrv, err := ops.Start(log, cfg.Ops, reg, ops.NATSConnected(nc), ops.KVReachable(nc, cfg.Timer.Bucket))
	if err != nil {
		return errors.Join(err, svc.Stop())
	}
	<-ctx.Done()
	log.Info("stopping")
	return errors.Join(svc.Stop(), boot.StopOps(osrv))
}
