// Command echo runs the example echo service against a NATS server.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/boot"
	"github.com/switchboard-rt/switchboard/pkg/config"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
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
	var opts []nats.Option
	if cfg.NATS.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.NATS.CredsFile))
	}
	nc, err := natsx.Connect(log, cfg.NATS.URL, "switchboard-echo", opts...)
	if err != nil {
		return err
	}
	defer natsx.Drain(nc, 5*time.Second)
	svc, err := echosvc.Start(log, nc)
	if err != nil {
		return fmt.Errorf("start echo: %w", err)
	}
	<-ctx.Done()
	return svc.Stop()
}
