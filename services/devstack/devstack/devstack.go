// Package devstack runs a whole Switchboard in one process for development:
// an embedded nats-server with JetStream and, on in-process connections to
// it, the services named in the configuration.
//
// A profile selects a set of defaults (ProfileConfig) and the Go options of
// the gateway: the default profile ("") is the authenticated stack of
// `make run`; ProfileEcho is the Socket.IO protocol test target (auth
// disabled, the CONNECT auth payload forwarded to the echo service).
package devstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-rt/switchboard/pkg/boot"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/ops"
	"github.com/switchboard-rt/switchboard/services/auth/authsvc"
	"github.com/switchboard-rt/switchboard/services/echo/echosvc"
	"github.com/switchboard-rt/switchboard/services/gateway/gateway"
	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
	"github.com/switchboard-rt/switchboard/services/timer/timersvc"
)

// Service names accepted in Config.Services.
const (
	ServiceGateway  = "gateway"
	ServiceAuth     = "auth"
	ServicePresence = "presence"
	ServiceTimer    = "timer"
	ServiceEcho     = "echo"
)

// AllServices lists every service, in start order.
var AllServices = []string{ServiceAuth, ServicePresence, ServiceTimer, ServiceEcho, ServiceGateway}

// Profiles accepted in Config.Profile.
const (
	// ProfileDefault is the authenticated stack: JWTs signed with
	// authsvc.DevSecret, no auth payload on NATS.
	ProfileDefault = ""
	// ProfileEcho is the Socket.IO protocol test target: the gateway admits
	// every CONNECT without auth and forwards the CONNECT auth payload in
	// sb.in.connect to the echo service.
	ProfileEcho = "echo"
)

// Profiles lists every profile.
var Profiles = []string{ProfileDefault, ProfileEcho}

// NATSServerConfig configures the embedded nats-server.
type NATSServerConfig struct {
	// Listen is the client address; other processes (backend services, the
	// nats CLI) connect here. Port 0 picks a free port.
	Listen string `koanf:"listen"`
	// StoreDir holds JetStream's data (the KV buckets of presence and timer).
	StoreDir string `koanf:"store_dir"`
}

// Config is the configuration of the development stack. Authentication is
// not configurable: the default profile always verifies JWTs signed with
// authsvc.DevSecret, so that `devstack token` mints usable tokens, and
// ProfileEcho admits every CONNECT without auth.
type Config struct {
	// Profile selects the gateway's Go options (see the Profile constants);
	// ProfileConfig gives its default settings.
	Profile    string           `koanf:"profile"`
	NATSServer NATSServerConfig `koanf:"nats_server"`
	// Services to run in-process; empty runs NATS only.
	Services []string `koanf:"services"`
	// AuthClaims are the token claims the stack's auth passes on to
	// services (auth.claims of bin/auth); its verifier is fixed.
	AuthClaims []string           `koanf:"auth_claims"`
	Gateway    gateway.Config     `koanf:"gateway"`
	Presence   presencesvc.Config `koanf:"presence"`
	Timer      timersvc.Config    `koanf:"timer"`
	Log        boot.LogConfig     `koanf:"log"`
	// Ops serves the metrics of every service of the stack, and its
	// readiness.
	Ops ops.Config `koanf:"ops"`
}

// DefaultConfig is the configuration of `make run`.
func DefaultConfig() Config {
	gw := gateway.DefaultConfig()
	// Loopback only: the stack accepts tokens signed with the public
	// development secret.
	gw.Listen = "127.0.0.1:3000"
	gw.AllowedOrigins = []string{"http://localhost:*", "http://127.0.0.1:*"}
	// Every client of a development stack shares one address.
	gw.MaxEnginesPerIP, gw.HandshakeRate, gw.HandshakeBurst = gw.MaxEngines, 10000, 10000
	return Config{
		NATSServer: NATSServerConfig{Listen: "127.0.0.1:4222", StoreDir: "data/nats"},
		Services:   []string{ServiceGateway, ServiceAuth, ServicePresence, ServiceTimer},
		Gateway:    gw,
		Presence:   presencesvc.DefaultConfig(),
		Timer:      timersvc.DefaultConfig(),
		Log:        boot.DefaultLog(),
		Ops:        ops.DefaultConfig("127.0.0.1:9090"),
	}
}

// ProfileConfig is the default configuration of a profile: DefaultConfig
// for ProfileDefault; for ProfileEcho the gateway, presence and echo
// services, with ping 300/200 ms, connect timeout 1000 ms, the namespaces
// "/" and "/custom", any origin, and no `connections` events.
func ProfileConfig(profile string) (Config, error) {
	c := DefaultConfig()
	switch profile {
	case ProfileDefault:
		return c, nil
	case ProfileEcho:
		c.Profile = ProfileEcho
		c.Services = []string{ServicePresence, ServiceEcho, ServiceGateway}
		c.Gateway.PingInterval = 300 * time.Millisecond
		c.Gateway.PingTimeout = 200 * time.Millisecond
		c.Gateway.ConnectTimeout = 1000 * time.Millisecond
		c.Gateway.Namespaces = slices.Clone(echosvc.Namespaces)
		c.Gateway.AllowedOrigins = []string{"*"}
		c.Presence.ConnectionsEvents = false
		return c, nil
	}
	return Config{}, fmt.Errorf("profile: unknown profile %q (want one of %q)", profile, Profiles)
}

// gatewayOptions are the gateway's Go options in a profile.
func gatewayOptions(profile string) []gateway.Option {
	if profile == ProfileEcho {
		return []gateway.Option{gateway.WithoutAuth(), gateway.ForwardAuth()}
	}
	return nil
}

// AuthConfig is the fixed authentication of the stack: JWT with DevSecret.
func AuthConfig() authsvc.Config {
	c := authsvc.DefaultConfig()
	c.Verifier = "jwt"
	c.JWT.Secret = authsvc.DevSecret
	return c
}

// MintToken mints a token that the stack accepts for uid, with extra
// claims (nil: none).
func MintToken(uid string, ttl time.Duration, claims map[string]any) (string, error) {
	c := AuthConfig()
	return authsvc.MintTokenWith(c.JWT.Secret, c.JWT.Issuer, c.JWT.Audience, uid, ttl, claims)
}

// Validate checks the parts of c the stack itself interprets.
func (c Config) Validate() error {
	if !slices.Contains(Profiles, c.Profile) {
		return fmt.Errorf("profile: unknown profile %q (want one of %q)", c.Profile, Profiles)
	}
	if c.NATSServer.StoreDir == "" {
		return errors.New("nats_server.store_dir is empty")
	}
	if _, _, err := splitListen(c.NATSServer.Listen); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, s := range c.Services {
		if !slices.Contains(AllServices, s) {
			return fmt.Errorf("services: unknown service %q (want some of %v)", s, AllServices)
		}
		if seen[s] {
			return fmt.Errorf("services: %q listed twice", s)
		}
		seen[s] = true
	}
	return nil
}

func (c Config) runs(name string) bool { return slices.Contains(c.Services, name) }

func splitListen(listen string) (string, int, error) {
	host, p, err := net.SplitHostPort(listen)
	if err != nil {
		return "", 0, fmt.Errorf("nats_server.listen %q: %w", listen, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("nats_server.listen %q: bad port", listen)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

// checkPorts fails when an address the stack would listen on is taken.
func checkPorts(cfg Config) error {
	addrs := []struct{ setting, addr string }{{"nats_server.listen", cfg.NATSServer.Listen}, {"ops.listen", cfg.Ops.Listen}}
	if cfg.runs(ServiceGateway) {
		addrs = append(addrs, struct{ setting, addr string }{"gateway.listen", cfg.Gateway.Listen})
	}
	for _, a := range addrs {
		if a.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", a.addr)
		if err != nil {
			return fmt.Errorf("%s %s is in use (another stack running?): %w", a.setting, a.addr, err)
		}
		_ = ln.Close()
	}
	return nil
}

// Stack is a running development stack.
type Stack struct {
	profile  string
	log      *slog.Logger
	ns       *server.Server
	gw       *gateway.Gateway
	services []stopper // stopped in reverse order, after the gateway
	conns    []*nats.Conn
	reg      *prometheus.Registry
	ops      *ops.Server
}

type stopper struct {
	name string
	stop func() error
}

// Start starts the NATS server, then auth, presence, timer and echo, then
// the gateway (each one that cfg.Services names), the gateway with the Go
// options of cfg.Profile. On error everything started is stopped again.
func Start(ctx context.Context, log *slog.Logger, cfg Config) (st *Stack, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// A busy port fails the start before the store is opened: a second
	// stack on the same store would corrupt it.
	if err := checkPorts(cfg); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.NATSServer.StoreDir, 0o755); err != nil {
		return nil, fmt.Errorf("create store dir: %w", err)
	}
	host, port, _ := splitListen(cfg.NATSServer.Listen)
	ns, err := server.NewServer(&server.Options{
		ServerName: "switchboard-devstack",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.NATSServer.StoreDir,
		NoSigs:     true,
	})
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	nl := natsLogger{log: log.With("component", "nats-server"), fatal: make(chan string, 1)}
	ns.SetLoggerV2(nl, false, false, false)
	go ns.Start()
	if err := waitReady(ns, nl.fatal, 30*time.Second); err != nil {
		ns.Shutdown()
		return nil, fmt.Errorf("nats server: %w", err)
	}
	st = &Stack{profile: cfg.Profile, log: log, ns: ns, reg: ops.NewRegistry()}
	defer func() {
		if err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if serr := st.Stop(sctx); serr != nil {
				log.Warn("stop after failed start", "err", serr)
			}
			st = nil
		}
	}()

	if cfg.runs(ServiceAuth) {
		nc, err := st.connect(ctx, ServiceAuth)
		if err != nil {
			return st, err
		}
		acfg := AuthConfig()
		acfg.Claims = cfg.AuthClaims
		svc, err := authsvc.Start(ctx, log.With("component", ServiceAuth), nc, acfg, authsvc.WithDevSecret())
		if err != nil {
			return st, fmt.Errorf("start auth: %w", err)
		}
		st.reg.MustRegister(svc.Collectors()...)
		st.services = append(st.services, stopper{ServiceAuth, svc.Stop})
	}
	if cfg.runs(ServicePresence) {
		nc, err := st.connect(ctx, ServicePresence)
		if err != nil {
			return st, err
		}
		svc, err := presencesvc.Start(ctx, log.With("component", ServicePresence), nc, cfg.Presence)
		if err != nil {
			return st, fmt.Errorf("start presence: %w", err)
		}
		st.reg.MustRegister(svc.Collectors()...)
		st.services = append(st.services, stopper{ServicePresence, svc.Stop})
	}
	if cfg.runs(ServiceTimer) {
		nc, err := st.connect(ctx, ServiceTimer)
		if err != nil {
			return st, err
		}
		svc, err := timersvc.Start(ctx, log.With("component", ServiceTimer), nc, cfg.Timer)
		if err != nil {
			return st, fmt.Errorf("start timer: %w", err)
		}
		st.reg.MustRegister(svc.Collectors()...)
		st.services = append(st.services, stopper{ServiceTimer, svc.Stop})
	}
	if cfg.runs(ServiceEcho) {
		nc, err := st.connect(ctx, ServiceEcho)
		if err != nil {
			return st, err
		}
		svc, err := echosvc.Start(log.With("component", ServiceEcho), nc)
		if err != nil {
			return st, fmt.Errorf("start echo: %w", err)
		}
		st.services = append(st.services, stopper{ServiceEcho, svc.Stop})
	}
	if cfg.runs(ServiceGateway) {
		nc, err := st.connect(ctx, ServiceGateway)
		if err != nil {
			return st, err
		}
		gw, err := gateway.Start(ctx, log.With("component", ServiceGateway), nc, cfg.Gateway, gatewayOptions(cfg.Profile)...)
		if err != nil {
			return st, fmt.Errorf("start gateway: %w", err)
		}
		st.gw = gw
		st.reg.MustRegister(gw.Collectors()...)
	}
	checks := make([]ops.Check, 0, len(st.conns))
	for _, nc := range st.conns {
		checks = append(checks, ops.NATSConnected(nc))
	}
	if st.ops, err = ops.Start(log, cfg.Ops, st.reg, checks...); err != nil {
		return st, err
	}
	return st, nil
}

// connect opens an in-process client connection for one service.
func (st *Stack) connect(ctx context.Context, name string) (*nats.Conn, error) {
	nc, err := natsx.Connect(ctx, st.log.With("component", name), st.ns.ClientURL(), "devstack-"+name, nats.InProcessServer(st.ns))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	st.conns = append(st.conns, nc)
	return nc, nil
}

// OpsAddr is the address of the stack's /metrics, /healthz and /readyz,
// nil when ops.listen is empty.
func (st *Stack) OpsAddr() net.Addr {
	if st.ops == nil {
		return nil
	}
	return st.ops.Addr()
}

// Profile is the profile the stack runs.
func (st *Stack) Profile() string { return st.profile }

// NATSURL is the client URL of the embedded NATS server.
func (st *Stack) NATSURL() string { return st.ns.ClientURL() }

// NATSAddr is the listening address of the embedded NATS server.
func (st *Stack) NATSAddr() net.Addr { return st.ns.Addr() }

// GatewayAddr is the gateway's listening address, nil when the stack runs
// no gateway.
func (st *Stack) GatewayAddr() net.Addr {
	if st.gw == nil {
		return nil
	}
	return st.gw.Addr()
}

// Stop drains the gateway first (clients reconnect elsewhere), then stops
// the services, closes their NATS connections and shuts NATS down.
func (st *Stack) Stop(ctx context.Context) error {
	var errs []error
	if st.ops != nil {
		if err := st.ops.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop ops: %w", err))
		}
		st.ops = nil
	}
	if st.gw != nil {
		if err := st.gw.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop gateway: %w", err))
		}
		st.gw = nil
	}
	for i := len(st.services) - 1; i >= 0; i-- {
		s := st.services[i]
		if err := s.stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", s.name, err))
		}
	}
	st.services = nil
	for _, nc := range st.conns {
		natsx.Drain(nc, 5*time.Second)
	}
	st.conns = nil
	if st.ns != nil {
		st.ns.Shutdown()
		st.ns.WaitForShutdown()
		st.ns = nil
	}
	return errors.Join(errs...)
}

// waitReady waits until ns accepts clients, fails (a fatal log, such as a
// busy port) or timeout passes.
func waitReady(ns *server.Server, fatal <-chan string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !ns.ReadyForConnections(50 * time.Millisecond) {
		select {
		case msg := <-fatal:
			return errors.New(msg)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v", timeout)
		}
	}
	return nil
}

// natsLogger sends nats-server's log to slog. Notices (the start banner and
// the like) are debug messages: the stack prints its own summary.
// Fatal messages also go to fatal (without blocking) so that Start notices.
type natsLogger struct {
	log   *slog.Logger
	fatal chan string
}

func (l natsLogger) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l natsLogger) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l natsLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.log.Error(msg)
	select {
	case l.fatal <- msg:
	default:
	}
}
func (l natsLogger) Errorf(format string, v ...any) { l.log.Error(fmt.Sprintf(format, v...)) }
func (l natsLogger) Debugf(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l natsLogger) Tracef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }

var _ server.Logger = natsLogger{}
