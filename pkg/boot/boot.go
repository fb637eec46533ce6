// Package boot holds what every service's main does before run: load the
// typed configuration, build the logger and print the settings with secrets
// masked.
package boot

import (
	"context"
	"errors"
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
	"github.com/switchboard-rt/switchboard/pkg/ops"
)

// LogConfig selects the logger.
type LogConfig struct {
	Level  string `koanf:"level"`  // debug, info, warn, error
	Format string `koanf:"format"` // text or json
}

// DefaultLog is the default logger configuration.
func DefaultLog() LogConfig { return LogConfig{Level: "info", Format: "text"} }

// NATSConfig says how a service reaches NATS. Credentials are separate
// settings, so that the URL (logged at start and in connect errors) holds
// no secret; a password written into the URL is masked wherever it is shown.
type NATSConfig struct {
	URL string `koanf:"url"`
	// User and Password authenticate with a user of the server's
	// authorization block.
	User     string `koanf:"user"`
	Password string `koanf:"password"`
	// NKeySeedFile authenticates with an nkey (a file holding the seed);
	// CredsFile with a decentralized JWT and its seed.
	NKeySeedFile string `koanf:"nkey_seed_file"`
	CredsFile    string `koanf:"creds_file"`
	// TLS: the CA to verify the server with, and a client certificate.
	TLSCAFile   string `koanf:"tls_ca_file"`
	TLSCertFile string `koanf:"tls_cert_file"`
	TLSKeyFile  string `koanf:"tls_key_file"`
	// InboxPrefix is where replies to this service's requests arrive
	// ("" picks _INBOX_<service>): the server's permissions can then give
	// each service its own inboxes only.
	InboxPrefix string        `koanf:"inbox_prefix"`
	Timeout     time.Duration `koanf:"request_timeout"`
}

// DefaultNATS is the default NATS configuration.
func DefaultNATS() NATSConfig {
	return NATSConfig{URL: "nats://127.0.0.1:4222", Timeout: 3 * time.Second}
}

// InboxFor is the default inbox prefix of a service: _INBOX_<name>, without
// a "switchboard-" prefix.
func InboxFor(service string) string {
	return "_INBOX_" + strings.TrimPrefix(service, "switchboard-")
}

// options turns the settings into connection options.
func (c NATSConfig) options(service string) ([]nats.Option, error) {
	var opts []nats.Option
	if c.User != "" || c.Password != "" {
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	}
	if c.NKeySeedFile != "" {
		o, err := nats.NkeyOptionFromSeed(c.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("nkey seed file: %w", err)
		}
		opts = append(opts, o)
	}
	if c.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.TLSCAFile != "" {
		opts = append(opts, nats.RootCAs(c.TLSCAFile))
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return nil, errors.New("tls_cert_file and tls_key_file go together")
	}
	if c.TLSCertFile != "" {
		opts = append(opts, nats.ClientCert(c.TLSCertFile, c.TLSKeyFile))
	}
	prefix := c.InboxPrefix
	if prefix == "" {
		prefix = InboxFor(service)
	}
	opts = append(opts, nats.CustomInboxPrefix(prefix))
	return opts, nil
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

// Connect dials NATS as configured (credentials, TLS, the service's inbox
// prefix), logging connection changes. Close it with Drain.
// While no server answers it waits (with backoff) until ctx ends.
// extra options come after the configured ones.
func (c NATSConfig) Connect(ctx context.Context, log *slog.Logger, name string, extra ...nats.Option) (*nats.Conn, error) {
	opts, err := c.options(name)
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	return natsx.Connect(ctx, log, c.URL, name, append(opts, extra...)...)
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

// IsHealth reports whether args ask for the health subcommand.
func IsHealth(args []string) bool { return len(args) > 0 && args[0] == "health" }

// Health is the `health` subcommand of a service binary (for container
// healthchecks, where the image has no shell or curl): it loads cfg the way
// the service does (YAML file, SB_ variables, flags) and asks the service's
// operations listener whether it is ready. It returns the exit code: 0
// ready, 1 not ready or not answering, 2 a configuration error.
func Health(name string, cfg any, opsc *ops.Config, args, environ []string, stderr io.Writer) int {
	if _, err := config.Load(cfg, name, args, environ, stderr); err != nil {
		if config.IsHelp(err) {
			return 0
		}
		fmt.Fprintf(stderr, "%s health: %v\n", name, err)
		return 2
	}
	if opsc.Listen == "" {
		fmt.Fprintf(stderr, "%s health: ops.listen is empty: nothing to ask\n", name)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), opsc.CheckTimeout+3*time.Second)
	defer cancel()
	if err := ops.Probe(ctx, opsc.Listen, "/readyz"); err != nil {
		fmt.Fprintf(stderr, "%s health: %v\n", name, err)
		return 1
	}
	return 0
}

// StopOps stops an operations listener, waiting at most 5 s.
func StopOps(s *ops.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		return fmt.Errorf("stop ops: %w", err)
	}
	return nil
}

// StartPatience bounds how long a service keeps trying to start while NATS
// answers with errors a later attempt may not see: JetStream electing its
// leaders after a node restarted, a stream without quorum for a moment.
const StartPatience = time.Minute

// Start calls start until it succeeds, fails for good, ctx ends or
// StartPatience passes (natsx.Retry: each attempt at most 5 s), logging
// each failure it tries again after. start must leave nothing running when
// it fails.
func Start[T any](ctx context.Context, log *slog.Logger, start func(context.Context) (T, error)) (T, error) {
	var out T
	err := natsx.Retry(ctx, StartPatience, func(ctx context.Context) error {
		v, err := start(ctx)
		if err != nil {
			if natsx.Transient(err) {
				log.Warn("start failed, trying again", "err", err)
			}
			return err
		}
		out = v
		return nil
	})
	return out, err
}
