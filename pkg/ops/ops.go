// Package ops serves what operators and orchestrators ask a service:
// Prometheus metrics on /metrics, liveness on /healthz and readiness on
// /readyz, on a listener of its own (never the public one). Probe is the
// client side, for the `health` subcommand of each binary.
package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config is the operations listener of a service.
type Config struct {
	// Listen is the address of /metrics, /healthz and /readyz; "" serves
	// none of them.
	Listen string `koanf:"listen"`
	// CheckTimeout bounds each readiness check.
	CheckTimeout time.Duration `koanf:"check_timeout"`
	// Pprof serves Go's profiles under /debug/pprof/ as well.
	Pprof bool `koanf:"pprof"`
}

// DefaultConfig serves on listen.
func DefaultConfig(listen string) Config {
	return Config{Listen: listen, CheckTimeout: 2 * time.Second}
}

// Check is one readiness condition: nil when it holds.
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
}

// NATSConnected holds while nc is connected.
func NATSConnected(nc *nats.Conn) Check {
	return Check{Name: "nats", Fn: func(context.Context) error {
		if s := nc.Status(); s != nats.CONNECTED {
			return fmt.Errorf("nats %s", strings.ToLower(s.String()))
		}
		return nil
	}}
}

// KVReachable holds while the bucket's stream answers (looking the bucket
// up asks the stream for its info).
func KVReachable(nc *nats.Conn, bucket string) Check {
	return Check{Name: "kv " + bucket, Fn: func(ctx context.Context) error {
		js, err := jetstream.New(nc)
		if err != nil {
			return fmt.Errorf("jetstream: %w", err)
		}
		if _, err := js.KeyValue(ctx, bucket); err != nil {
			return fmt.Errorf("kv %s: %w", bucket, err)
		}
		return nil
	}}
}

// NewRegistry is a registry holding the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Server is a running operations listener.
type Server struct {
	cfg    Config
	log    *slog.Logger
	ln     net.Listener
	srv    *http.Server
	checks []Check
	done   chan struct{}
}

// Start serves reg's metrics and the checks on cfg.Listen. With an empty
// Listen it returns a Server that serves nothing.
func Start(log *slog.Logger, cfg Config, reg prometheus.Gatherer, checks ...Check) (*Server, error) {
	s := &Server{cfg: cfg, log: log, checks: checks, done: make(chan struct{})}
	if s.cfg.CheckTimeout <= 0 {
		s.cfg.CheckTimeout = 2 * time.Second
	}
	if cfg.Listen == "" {
		close(s.done)
		return s, nil
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("ops listen %s (set ops.listen): %w", cfg.Listen, err)
	}
	s.ln = ln
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { writeStatus(w, http.StatusOK, nil) })
	mux.HandleFunc("/readyz", s.serveReady)
	if cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	// No WriteTimeout: a CPU profile or trace streams for its whole length.
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 8 << 10}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("ops server", "err", err)
		}
	}()
	log.Info("ops listening", "addr", ln.Addr().String())
	return s, nil
}

// Addr is the listening address, nil when nothing is served.
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Ready runs every check and returns the failures by name.
func (s *Server) Ready(ctx context.Context) map[string]string {
	failed := map[string]string{}
	for _, c := range s.checks {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.CheckTimeout)
		err := c.Fn(cctx)
		cancel()
		if err != nil {
			failed[c.Name] = err.Error()
		}
	}
	return failed
}

func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	failed := s.Ready(r.Context())
	if len(failed) > 0 {
		writeStatus(w, http.StatusServiceUnavailable, failed)
		return
	}
	writeStatus(w, http.StatusOK, nil)
}

func writeStatus(w http.ResponseWriter, code int, failed map[string]string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	body := map[string]any{"status": "ok"}
	if len(failed) > 0 {
		body = map[string]any{"status": "unavailable", "failed": failed}
	}
	_ = json.NewEncoder(w).Encode(body)
}

// Stop closes the listener and waits for requests in flight.
func (s *Server) Stop(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	err := s.srv.Shutdown(ctx)
	<-s.done
	return err
}

// ProbeAddr turns a listen address into one to dial: an empty or
// unspecified host becomes loopback.
func ProbeAddr(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("ops.listen %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port), nil
}

// Probe asks the service listening on listen whether it is ready (path
// /readyz) or alive (/healthz), and returns nil for a 200.
func Probe(ctx context.Context, listen, path string) error {
	addr, err := ProbeAddr(listen)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("probe %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("probe %s: %s %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}
