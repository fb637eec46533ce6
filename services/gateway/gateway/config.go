package gateway

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Config is the gateway's configuration.
type Config struct {
	Listen          string        `koanf:"listen"`
	Path            string        `koanf:"path"`
	PingInterval    time.Duration `koanf:"ping_interval"`
	PingTimeout     time.Duration `koanf:"ping_timeout"`
	MaxPayload      int           `koanf:"max_payload"`
	ConnectTimeout  time.Duration `koanf:"connect_timeout"`
	AllowedOrigins  []string      `koanf:"allowed_origins"`
	AllowQueryToken bool          `koanf:"allow_query_token"`
	TrustProxy      bool          `koanf:"trust_proxy"`
	SendQueue       int           `koanf:"send_queue"`
	// SendQueueBytes bounds the bytes queued for one client (WebSocket
	// frames not yet written, polling packets not yet fetched, deliveries
	// held during the handshake); past it the client is disconnected as
	// slow, like past SendQueue messages.
	SendQueueBytes    int           `koanf:"send_queue_bytes"`
	RequestTimeout    time.Duration `koanf:"request_timeout"`
	HeartbeatInterval time.Duration `koanf:"heartbeat_interval"`
	Namespaces        []string      `koanf:"namespaces"`
	MaxPendingAcks    int           `koanf:"max_pending_acks"`
	// ExpireSockets ends a socket (DISCONNECT, then close) when its token
	// expires. Off by default: clients then stay connected past expiry, as
	// with a typical Socket.IO server that checks tokens only at connect.
	ExpireSockets bool   `koanf:"expire_sockets"`
	ID            string `koanf:"id"`
}

// DefaultConfig returns the defaults of CONTRACT §2.
func DefaultConfig() Config {
	return Config{
		Listen:            ":3000",
		Path:              "/socket.io/",
		PingInterval:      25 * time.Second,
		PingTimeout:       20 * time.Second,
		MaxPayload:        1_000_000,
		ConnectTimeout:    45 * time.Second,
		AllowedOrigins:    []string{},
		AllowQueryToken:   true,
		SendQueue:         256,
		SendQueueBytes:    4 << 20,
		RequestTimeout:    5 * time.Second,
		HeartbeatInterval: 3 * time.Second,
		Namespaces:        []string{"/"},
		MaxPendingAcks:    64,
	}
}

func (c Config) validate() error {
	var errs []error
	check := func(ok bool, format string, a ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, a...))
		}
	}
	check(c.Listen != "", "listen is empty")
	check(strings.HasPrefix(c.Path, "/"), "path %q must start with /", c.Path)
	check(c.PingInterval > 0 && c.PingTimeout > 0, "ping_interval and ping_timeout must be positive")
	check(c.MaxPayload >= 1024, "max_payload must be at least 1024")
	check(c.ConnectTimeout > 0, "connect_timeout must be positive")
	check(c.SendQueue >= 8, "send_queue must be at least 8")
	check(c.SendQueueBytes >= 2*c.MaxPayload, "send_queue_bytes must be at least 2 × max_payload (%d), got %d", 2*c.MaxPayload, c.SendQueueBytes)
	check(c.RequestTimeout > 0, "request_timeout must be positive")
	check(c.HeartbeatInterval > 0, "heartbeat_interval must be positive")
	check(c.MaxPendingAcks > 0, "max_pending_acks must be positive")
	check(len(c.Namespaces) > 0, "namespaces is empty")
	for _, ns := range c.Namespaces {
		check(strings.HasPrefix(ns, "/"), "namespace %q must start with /", ns)
	}
	for _, o := range c.AllowedOrigins {
		check(o == "*" || strings.Contains(o, "://"), "allowed origin %q must be * or scheme://host[:port]", o)
	}
	return errors.Join(errs...)
}
