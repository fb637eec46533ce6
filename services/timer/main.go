// Command timer runs Switchboard's timer service: per-device countdown
// timers started by clients (timerStart, timerStop, timerList), stored in
// JetStream KV and ticked once per second by the instance holding the tick
// lease.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/switchboard-rt/switchboard/pkg/boot"
	"github.com/switchboard-rt/switchboard/pkg/config"
	"github.com/switchboard-rt/switchboard/services/timer/timersvc"
)

// Config is the timer binary's configuration.
type Config struct {
	NATS  boot.NATSConfig `koanf:"nats"`
	Log   boot.LogConfig  `koanf:"log"`
	Timer timersvc.Config `koanf:"timer"`
}

// DefaultConfig returns the binary's defaults.
func DefaultConfig() Config {
	return Config{NATS: boot.DefaultNATS(), Log: boot.DefaultLog(), Timer: timersvc.DefaultConfig()}
}

func main() {
	log, cfg, err := load(os.Args[1:], os.Environ(), os.Stderr)
	if config.IsHelp(err) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "timer: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err = run(ctx, log, cfg)
	stop()
	if err != nil {
		log.Error("timer stopped", "err", err)
		os.Exit(1)
	}
}

// load reads the configuration and builds the logger.
func load(args, environ []string, out io.Writer) (*slog.Logger, Config, error) {
	cfg := DefaultConfig()
	log, rest, err := boot.Init("timer", &cfg, &cfg.Log, args, environ, out)
	if err != nil {
		return nil, cfg, err
	}
	if len(rest) > 0 {
		return nil, cfg, fmt.Errorf("unexpected arguments %q", rest)
	}
	return log, cfg, nil
}

// run serves until ctx is done, then stops (releasing the tick lease) and
// drains.
func run(ctx context.Context, log *slog.Logger, cfg Config) error {
	nc, err := cfg.NATS.Connect(log, timersvc.ServiceName)
	if err != nil {
		return err
	}
	defer cfg.NATS.Drain(nc)
	svc, err := timersvc.Start(ctx, log, nc, cfg.Timer)
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("stopping")
	return svc.Stop()
}
