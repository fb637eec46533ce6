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
	// TrustProxy is no longer supported: TrustedProxies names the proxies
	// whose X-Forwarded-For is believed.
	TrustProxy bool `koanf:"trust_proxy"`
	// TrustedProxies lists addresses and CIDR ranges of reverse proxies:
	// from a peer among them, the client address is the right-most
	// X-Forwarded-For entry that is not one of them.
	TrustedProxies []string `koanf:"trusted_proxies"`
	// MaxEngines bounds the engine connections of this gateway.
	MaxEngines int `koanf:"max_engines"`
	// MaxEnginesPerIP bounds the engine connections of one client address
	// on this gateway.
	MaxEnginesPerIP int `koanf:"max_engines_per_ip"`
	// HandshakeRate (per second) and HandshakeBurst bound the new engine
	// connections of one client address (a token bucket).
	HandshakeRate  float64 `koanf:"handshake_rate"`
	HandshakeBurst int     `koanf:"handshake_burst"`
	// MaxHeaderBytes bounds the request headers of an HTTP request;
	// BodyTimeout the reading of a POST body; IdleTimeout how long an idle
	// keep-alive connection stays open.
	MaxHeaderBytes int           `koanf:"max_header_bytes"`
	BodyTimeout    time.Duration `koanf:"body_timeout"`
	IdleTimeout    time.Duration `koanf:"idle_timeout"`
	// UpgradeTimeout bounds a WebSocket upgrade from its probe to its `5`:
	// past it the WebSocket is closed and the session stays on polling.
	UpgradeTimeout time.Duration `koanf:"upgrade_timeout"`
	// SendQueue is melody's per-connection queue, in messages: each slot
	// costs 40 bytes of every connection, used or not (10 KiB at 256), and
	// a burst to one socket past it closes the socket as slow.
	SendQueue int `koanf:"send_queue"`
	// SendQueueBytes bounds the bytes queued for one client (WebSocket
	// frames not yet written, polling packets not yet fetched, deliveries
	// held during the handshake); past it the client is disconnected as
	// slow, like past SendQueue messages.
	SendQueueBytes    int           `koanf:"send_queue_bytes"`
	RequestTimeout    time.Duration `koanf:"request_timeout"`
	HeartbeatInterval time.Duration `koanf:"heartbeat_interval"`
	Namespaces        []string      `koanf:"namespaces"`
	MaxPendingAcks    int           `koanf:"max_pending_acks"`
	// AuthCacheSize bounds the identities remembered by token hash
	// (0: none); AuthCacheTTL is how long one is trusted without asking
	// auth again (never past the token's expiry; 0: not at all).
	AuthCacheSize int           `koanf:"auth_cache_size"`
	AuthCacheTTL  time.Duration `koanf:"auth_cache_ttl"`
	// TokenExpiringLead is how long before its token expires a socket
	// gets tokenExpiring, its cue to send refreshToken (0: never).
	TokenExpiringLead time.Duration `koanf:"token_expiring_lead"`
	// ExpireSockets ends a socket (DISCONNECT, then close) ExpireGrace
	// after its token expired without a refreshToken. Off by default:
	// clients then stay connected past expiry, as with a typical
	// Socket.IO server that checks tokens only at connect.
	ExpireSockets bool          `koanf:"expire_sockets"`
	ExpireGrace   time.Duration `koanf:"expire_grace"`
	ID            string        `koanf:"id"`
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
		MaxEngines:        50000,
		MaxEnginesPerIP:   256,
		HandshakeRate:     20,
		HandshakeBurst:    100,
		MaxHeaderBytes:    32 << 10,
		BodyTimeout:       10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		UpgradeTimeout:    10 * time.Second,
		RequestTimeout:    5 * time.Second,
		HeartbeatInterval: time.Second,
		Namespaces:        []string{"/"},
		MaxPendingAcks:    64,
		AuthCacheSize:     10000,
		AuthCacheTTL:      30 * time.Second,
		TokenExpiringLead: time.Minute,
		ExpireGrace:       25 * time.Second,
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
	check(c.AuthCacheSize >= 0 && c.AuthCacheTTL >= 0, "auth_cache_size and auth_cache_ttl must not be negative")
	check(c.TokenExpiringLead >= 0 && c.ExpireGrace >= 0, "token_expiring_lead and expire_grace must not be negative")
	check(!c.TrustProxy, "trust_proxy is replaced by trusted_proxies: list the addresses or CIDR ranges of your reverse proxies")
	_, err := parseProxies(c.TrustedProxies)
	check(err == nil, "trusted_proxies: %v", err)
	check(c.MaxEngines > 0 && c.MaxEnginesPerIP > 0, "max_engines and max_engines_per_ip must be positive")
	check(c.HandshakeRate > 0 && c.HandshakeBurst > 0, "handshake_rate and handshake_burst must be positive")
	check(c.MaxHeaderBytes >= 4096, "max_header_bytes must be at least 4096")
	check(c.BodyTimeout > 0 && c.IdleTimeout > 0 && c.UpgradeTimeout > 0, "body_timeout, idle_timeout and upgrade_timeout must be positive")
	check(len(c.Namespaces) > 0, "namespaces is empty")
	for _, ns := range c.Namespaces {
		check(strings.HasPrefix(ns, "/"), "namespace %q must start with /", ns)
	}
	for _, o := range c.AllowedOrigins {
		check(o == "*" || strings.Contains(o, "://"), "allowed origin %q must be * or scheme://host[:port]", o)
	}
	return errors.Join(errs...)
}
