// Package natstest runs an embedded nats-server with JetStream for tests: one
// per test, on a random port, with its store in a temporary directory.
package natstest

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Server is an embedded test server that can be restarted on the same port
// and store.
type Server struct {
	*server.Server
	t    testing.TB
	opts server.Options
}

// Run starts a JetStream-enabled server for t and stops it at cleanup.
func Run(t testing.TB) *Server { return RunWith(t, nil) }

// RunWith is Run with options changed by mod (users, limits) first.
func RunWith(t testing.TB, mod func(*server.Options)) *Server {
	t.Helper()
	s := &Server{t: t, opts: server.Options{
		Host:      "127.0.0.1",
		Port:      server.RANDOM_PORT,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	}}
	if mod != nil {
		mod(&s.opts)
	}
	s.start()
	s.opts.Port = s.Addr().(*net.TCPAddr).Port // restart on the same address
	t.Cleanup(s.stop)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	opts := s.opts
	srv, err := server.NewServer(&opts)
	if err != nil {
		s.t.Fatalf("natstest: new server: %v", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		s.t.Fatalf("natstest: server not ready")
	}
	s.Server = srv
}

func (s *Server) stop() {
	if s.Server != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// Restart stops the server and starts it again with the same port and store.
func (s *Server) Restart() {
	s.t.Helper()
	s.stop()
	s.start()
}

// Down stops the server (its store stays for Up).
func (s *Server) Down() { s.stop(); s.Server = nil }

// Up starts a stopped server again, with the same port and store.
func (s *Server) Up() {
	s.t.Helper()
	s.start()
}

// URL is the client URL of the server.
func (s *Server) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.opts.Port) }

// Conn connects a client that is closed at cleanup.
func (s *Server) Conn(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.URL(), append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatalf("natstest: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}
