// Package boot holds what every service's main does before run: load the
// typed configuration, build the logger and print the settings with secrets
// masked.
package boot

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/config"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
)

// LogConfig selects the logger.
type LogConfig struct {
	Level  string `koanf:"level"`  // debug, info, warn, error
	Format string `koanf:"format"` // text or json
}

// DefaultLog is the default logger configuration.
func DefaultLog() LogConfig { return LogConfig{Level: "info", Format: "text"} }

// NATSConfig says how a service reaches NATS.
type NATSConfig struct {
	URL       string        `koanf:"url"`
	CredsFile string        `koanf:"creds_file"`
	Timeout   time.Duration `koanf:"request_timeout"`
}

// DefaultNATS is the default NATS configuration.
func DefaultNATS() NATSConfig {
	return NATSConfig{URL: "nats://127.0.0.1:4222", Timeout: 3 * time.Second}
}

// NewLogger builds a slog logger writing to w.
func NewLogger(w io.Writer, c LogConfig) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", c.Level, err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(c.Format) {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", c.Format)
}

// Init loads cfg (which holds its defaults) from args and environ, builds the
// logger described by *logc once loaded, and logs the settings.
func Init(name string, cfg any, logc *LogConfig, args, environ []string, out io.Writer) (*slog.Logger, []string, error) {
	rest, err := config.Load(cfg, name, args, environ, out)
	if err != nil {
		return nil, nil, err
	}
	log, err := NewLogger(out, *logc)
	if err != nil {
		return nil, nil, err
	}
	log = log.With("service", name)
	log.Info("config", config.Printable(cfg)...)
	return log, rest, nil
}

// Connect dials NATS as configured: with the credentials file when set,
// logging connection changes. Close it with Drain.
func (c NATSConfig) Connect(log *slog.Logger, name string) (*nats.Conn, error) {
	var opts []nats.Option
	if c.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	return natsx.Connect(log, c.URL, name, opts...)
}

// Drain drains nc, waiting at most the request timeout (5 s when unset).
func (c NATSConfig) Drain(nc *nats.Conn) {
	d := c.Timeout
	if d <= 0 {
		d = 5 * time.Second
	}
	natsx.Drain(nc, d)
}

// Load is Init for binaries that take no positional arguments.
func Load(name string, cfg any, logc *LogConfig, args, environ []string, out io.Writer) (*slog.Logger, error) {
	log, rest, err := Init(name, cfg, logc, args, environ, out)
	if err != nil {
		return nil, err
	}
	if len(rest) > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", rest)
	}
	return log, nil
}

// Main is the body of a service binary's main: load the configuration
// (which builds the logger), then call run with a context that SIGINT or
// SIGTERM cancels. It returns the exit code for main to exit with: 0 after
// -h or a clean stop, 2 for a configuration error, 1 when run fails.
func Main(name string, stderr io.Writer, load func() (*slog.Logger, error), run func(context.Context, *slog.Logger) error) int {
	log, err := load()
	if config.IsHelp(err) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log); err != nil {
		log.Error(name+" stopped", "err", err)
		return 1
	}
	return 0
}
