// Command auth runs Switchboard's auth service: it verifies the tokens
// clients present to the gateway (sb.auth.verify).
package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"

	"github.com/switchboard-rt/switchboard/pkg/boot"
	"github.com/switchboard-rt/switchboard/pkg/ops"
	"github.com/switchboard-rt/switchboard/services/auth/authsvc"
)

// Config is the auth binary's configuration.
type Config struct {
	NATS boot.NATSConfig `koanf:"nats"`
	Log  boot.LogConfig  `koanf:"log"`
	Auth authsvc.Config  `koanf:"auth"`
	Ops  ops.Config      `koanf:"ops"`
}

// DefaultConfig returns the binary's defaults.
func DefaultConfig() Config {
	return Config{NATS: boot.DefaultNATS(), Log: boot.DefaultLog(), Auth: authsvc.DefaultConfig(), Ops: ops.DefaultConfig(OpsListen)}
}

// emulatorHostEnv makes the Firebase Admin SDK trust unsigned ID tokens.
const emulatorHostEnv = "FIREBASE_AUTH_EMULATOR_HOST"

// OpsListen is the default address of /metrics, /healthz and /readyz.
const OpsListen = ":9191"

func main() {
	if boot.IsHealth(os.Args[1:]) {
		cfg := DefaultConfig()
		os.Exit(boot.Health("auth", &cfg, &cfg.Ops, os.Args[2:], os.Environ(), os.Stderr))
	}
	var cfg Config
	os.Exit(boot.Main("auth", os.Stderr, func() (*slog.Logger, error) {
		log, c, err := load(os.Args[1:], os.Environ(), os.Stderr)
		cfg = c
		if err == nil {
			err = cfg.Auth.Validate()
		}
		if err == nil {
			// The one environment read outside the configuration: with this
			// variable set, the Firebase SDK accepts tokens without checking
			// their signature, so anyone could log in as anyone.
			err = emulatorGuard(os.LookupEnv)
		}
		return log, err
	}, func(ctx context.Context, log *slog.Logger) error { return run(ctx, log, cfg) }))
}

// load reads the configuration and builds the logger.
func load(args, environ []string, out io.Writer) (*slog.Logger, Config, error) {
	cfg := DefaultConfig()
	log, err := boot.Load("auth", &cfg, &cfg.Log, args, environ, out)
	return log, cfg, err
}

// emulatorGuard refuses to run when the Firebase Auth emulator is selected.
func emulatorGuard(lookup func(string) (string, bool)) error {
	if _, ok := lookup(emulatorHostEnv); ok {
		return errors.New(emulatorHostEnv + " is set: the Firebase SDK would accept unsigned tokens; unset it to run the auth service")
	}
	return nil
}

// run serves until ctx is done, then stops and drains.
func run(ctx context.Context, log *slog.Logger, cfg Config) error {
	nc, err := cfg.NATS.Connect(ctx, log, authsvc.ServiceName)
	if err != nil {
		return err
	}
	defer cfg.NATS.Drain(nc)
	svc, err := authsvc.Start(ctx, log, nc, cfg.Auth)
	if err != nil {
		return err
	}
	reg := ops.NewRegistry()
	reg.MustRegister(svc.Collectors()...)
	osrv, err := ops.Start(log, cfg.Ops, reg, ops.NATSConnected(nc))
	if err != nil {
		return errors.Join(err, svc.Stop())
	}
	<-ctx.Done()
	log.Info("stopping")
	return errors.Join(svc.Stop(), boot.StopOps(osrv))
}
