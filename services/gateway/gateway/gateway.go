// Package gateway moves frames between Socket.IO clients (Engine.IO v4 over
// WebSocket, served by melody) and NATS subjects. It holds no state of its own
// beyond the live connections: identities come from the auth service,
// connection slots from presence, everything else from whoever publishes on
// sb.out.*.
//
// It has three layers. A delivery travels down them (bridge, Socket.IO,
// transport) and a client's input up; each layer calls only its
// neighbours:
//
//   - transport (Engine.IO sessions): engine.go (one session: open,
//     heartbeat, close), transport.go (the WebSocket transport and its
//     bounded queue), polling.go, upgrade.go (polling to WebSocket, and
//     requests for a session another gateway holds), relay.go (a WebSocket
//     relayed to that gateway), verified.go (CONNECT outcomes that travel
//     with relayed input), http.go (the HTTP entry, melody's handlers);
//   - Socket.IO: sio.go (the namespaces joined on one engine, binary
//     attachments, bounds on CONNECTs), handshake.go (a CONNECT: identity,
//     subscriptions, admission, then `40`), socket.go (one namespace:
//     events, acks, its queue of deliveries);
//   - bridge (NATS): hub.go (the local sockets and their subscriptions),
//     deliver.go (sb.out.* to sockets), bridge.go (subscription dispatch,
//     heartbeats, releases, control subjects), authcache.go.
//
// gateway.go starts and stops the whole; timers.go runs the heartbeats and
// timeouts of every layer on one scheduler.
package gateway

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/olahol/melody"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/sched"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// ServiceName is the gateway's micro service name (nats micro ls).
const ServiceName = "switchboard-gateway"

// Version is the micro service version.
const Version = "1.0.0"

// Option changes how a gateway is built in code (never from configuration).
type Option func(*options)

type options struct {
	noAuth      bool
	forwardAuth bool
	shardBuffer int // deliveries buffered per dispatcher shard (0: 8192)
}

// WithoutAuth admits every CONNECT without asking the auth service; the
// user id is the socket id. Only development profiles use it.
func WithoutAuth() Option { return func(o *options) { o.noAuth = true } }

// withShardBuffer sets the deliveries buffered per dispatcher shard.
func withShardBuffer(n int) Option { return func(o *options) { o.shardBuffer = n } }

// ForwardAuth puts the CONNECT auth payload in the body of sb.in.connect.
// By default it is never put on NATS (it usually holds a token); only the
// protocol test profile uses this.
func ForwardAuth() Option { return func(o *options) { o.forwardAuth = true } }

// Gateway is a running Socket.IO gateway.
type Gateway struct {
	cfg     Config
	opts    options
	log     *slog.Logger
	nc      *nats.Conn
	id      string
	m       *melody.Melody
	origins *originChecker
	nsAllow map[string]bool
	sched   *sched.Scheduler[timerKey]
	hub     *hub
	adm     *admission
	metrics *metrics
	// authCache remembers verified tokens (nil: off).
	authCache *authCache
	proxies   proxies

	ln   net.Listener
	srv  *http.Server
	ctrl *nats.Subscription
	list *nats.Subscription // presence asking for the sockets
	ips  *nats.Subscription // other gateways' address reports
	all  *nats.Subscription // sb.out.all
	svc  micro.Service      // discovery and status (nats micro ls)

	shards []chan *nats.Msg
	subsMu sync.RWMutex
	subs   map[*nats.Subscription]subEntry

	relMu    sync.Mutex
	releases map[string]api.ReleaseRequest // releases to retry

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// beforeReadmit, when set (tests), runs before each socket's readmit.
	beforeReadmit func(*socket)
}

// Start builds a gateway, subscribes it to NATS and starts serving on
// cfg.Listen.
func Start(ctx context.Context, log *slog.Logger, nc *nats.Conn, cfg Config, opts ...Option) (*Gateway, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("gateway config: %w", err)
	}
	// A client frame of max_payload bytes must fit in a NATS message.
	if limit := nc.MaxPayload(); limit > 0 && int64(cfg.MaxPayload+natsHeadroom) > limit {
		return nil, fmt.Errorf("gateway config: max_payload %d does not fit the NATS server's max_payload %d (%d bytes are kept for subject and headers): lower it or raise the server's", cfg.MaxPayload, limit, natsHeadroom)
	}
	g := &Gateway{
		cfg:      cfg,
		log:      log,
		nc:       nc,
		id:       cfg.ID,
		origins:  newOriginChecker(cfg.AllowedOrigins),
		adm:      newAdmission(cfg),
		nsAllow:  map[string]bool{},
		subs:     map[*nats.Subscription]subEntry{},
		releases: map[string]api.ReleaseRequest{},
	}
	for _, o := range opts {
		o(&g.opts)
	}
	g.proxies, _ = parseProxies(cfg.TrustedProxies) // validated
	if g.id == "" {
		g.id = newID()
	}
	if _, err := subject.Encode(g.id); err != nil {
		return nil, fmt.Errorf("gateway id %q: %w", g.id, err)
	}
	for _, ns := range cfg.Namespaces {
		g.nsAllow[ns] = true
	}
	g.log = log.With("gateway", g.id)
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.hub = newHub(g)
	g.metrics = newMetrics(g)
	g.sched = sched.New(g.fire)
	g.authCache = newAuthCache(cfg.AuthCacheSize, cfg.AuthCacheTTL)

	g.m = melody.New()
	g.m.Config.MaxMessageSize = int64(cfg.MaxPayload)
	g.m.Config.MessageBufferSize = cfg.SendQueue
	// Engine.IO's own heartbeat (ping_interval, ping_timeout) finds dead
	// clients; melody's WebSocket pings would double that work on every
	// idle connection, so they are rare.
	g.m.Config.PingPeriod, g.m.Config.PongWait = wsPingPeriod, wsPingPeriod+time.Minute
	g.m.Upgrader.CheckOrigin = g.origins.allow
	// Write buffers are borrowed per frame, not held by each idle
	// connection. The read buffer is left at 0: the upgrader then reads
	// through the HTTP server's buffer, which the connection holds anyway.
	g.m.Upgrader.WriteBufferPool = &sync.Pool{}
	g.m.HandleConnect(g.onWSConnect)
	g.m.HandleMessage(func(s *melody.Session, b []byte) { g.onWSMessage(s, b, false) })
	g.m.HandleMessageBinary(func(s *melody.Session, b []byte) { g.onWSMessage(s, b, true) })
	g.m.HandleDisconnect(g.onWSDisconnect)
	g.m.HandleError(g.onWSError)
	g.m.HandleSentMessage(g.onWSSent)
	g.m.HandleSentMessageBinary(g.onWSSent)

	n := max(2, runtime.GOMAXPROCS(0))
	g.shards = make([]chan *nats.Msg, n)
	buf := g.opts.shardBuffer
	if buf == 0 {
		buf = 8192
	}
	// A delivery that finds its shard full is dropped by NATS (a slow
	// consumer): the sockets it was for are closed, never left open
	// with a gap.
	prevErr := nc.ErrorHandler()
	nc.SetErrorHandler(func(c *nats.Conn, sub *nats.Subscription, err error) {
		if prevErr != nil {
			prevErr(c, sub, err)
		}
		if sub != nil && errors.Is(err, nats.ErrSlowConsumer) {
			g.dropped(sub)
		}
	})
	for i := range g.shards {
		ch := make(chan *nats.Msg, buf)
		g.shards[i] = ch
		g.goRun(func() { g.dispatch(ch) })
	}
	// Broadcasts have a subscription (and goroutine) of their own, with a
	// deep pending queue.
	var err error
	if g.all, err = nc.Subscribe(subject.OutAll, g.hub.deliverAll); err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subject.OutAll, err)
	}
	if err := g.all.SetPendingLimits(1<<16, 256<<20); err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subject.OutAll, err)
	}
	ctrlSubj, err := subject.GatewayControl(g.id, subject.OpDisconnect)
	if err != nil {
		return nil, fmt.Errorf("control subject: %w", err)
	}
	if g.ctrl, err = nc.Subscribe(ctrlSubj, g.onDisconnectOrder); err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", ctrlSubj, err)
	}
	if g.ips, err = nc.Subscribe(subject.GatewayAddresses, g.onAddresses); err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subject.GatewayAddresses, err)
	}
	listSubj, err := subject.GatewayControl(g.id, subject.OpSockets)
	if err != nil {
		return nil, fmt.Errorf("control subject: %w", err)
	}
	if g.list, err = nc.Subscribe(listSubj, g.onSocketsRequest); err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", listSubj, err)
	}
	if err := g.addService(); err != nil {
		return nil, err
	}
	if err := nc.Flush(); err != nil {
		return nil, fmt.Errorf("flush subscriptions: %w", err)
	}

	g.resetSlots(ctx)
	if g.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc(cfg.Path, g.serveEngine)
	g.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: cfg.IdleTimeout, MaxHeaderBytes: cfg.MaxHeaderBytes}
	g.goRun(func() {
		if err := g.srv.Serve(g.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error("http server", "err", err)
		}
	})
	g.goRun(func() { g.sched.Run(g.ctx) })
	g.goRun(g.sweepLoop)
	g.goRun(g.heartbeatLoop)
	g.goRun(g.releaseLoop)
	prev := nc.Opts.ReconnectedCB
	nc.SetReconnectHandler(func(c *nats.Conn) {
		if prev != nil {
			prev(c)
		}
		g.goRun(g.readmit)
	})
	g.log.Info("gateway listening", "addr", g.ln.Addr().String(), "path", cfg.Path)
	return g, nil
}

// natsHeadroom is what a client event's message may need besides its body
// (subject and headers) on NATS.
const natsHeadroom = 4096

// fitsNATS reports whether a message body of n bytes fits the server's
// max_payload (a binary event's attachments grow by a third in base64).
func (g *Gateway) fitsNATS(n int) bool {
	return int64(n+natsHeadroom) <= g.nc.MaxPayload()
}

// sweepLoop forgets, every minute, client addresses without engines.
func (g *Gateway) sweepLoop() {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case now := <-t.C:
			g.adm.sweep(now.Add(-time.Minute))
		}
	}
}

// newEngine admits a new engine connection of r's client, or answers the
// refusal (HTTP 429 or 503) and returns nil.
func (g *Gateway) admitEngine(w http.ResponseWriter, r *http.Request) *engine {
	e := newEngine(g, r)
	if refused := g.adm.admit(e.ip, time.Now()); refused != nil {
		g.log.Debug("handshake refused", "ip", e.ip, "reason", refused.message)
		g.metrics.refused(refused)
		refused.write(w)
		return nil
	}
	return e
}

// resetSlots asks presence to release the sockets an earlier process with
// this gateway id left (a restart within gateway_ttl, with a fixed id):
// this process holds none yet. Without an answer it goes on (and says so):
// such slots then stay until presence purges this id as a dead gateway.
func (g *Gateway) resetSlots(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, g.cfg.RequestTimeout)
	defer cancel()
	reply, err := natsx.Request[api.ResetReply](rctx, g.nc, subject.PresenceReset, api.ResetRequest{Gateway: g.id})
	switch {
	case err != nil:
		g.log.Warn("reset the slots of this gateway id", "err", err)
	case reply.Released > 0:
		g.log.Info("released the slots an earlier process of this gateway id left", "sockets", reply.Released)
	}
}

func (g *Gateway) goRun(fn func()) {
	g.wg.Add(1)
	go func() { defer g.wg.Done(); fn() }()
}

// Addr is the address the gateway listens on.
func (g *Gateway) Addr() net.Addr { return g.ln.Addr() }

// ID is the gateway's instance id.
func (g *Gateway) ID() string { return g.id }

// Stop drains the gateway: it stops accepting connections, closes every
// engine connection without a Socket.IO DISCONNECT (so clients reconnect to
// another gateway) and releases their connection slots.
func (g *Gateway) Stop(ctx context.Context) error {
	// Shutdown closes the listeners at once, then waits for requests in
	// flight, among them held polls: closing the engines answers those.
	shut := make(chan error, 1)
	go func() { shut <- g.srv.Shutdown(ctx) }()
	for _, e := range g.hub.engines() {
		e.close(closeDrain)
	}
	shutdownErr := <-shut
	for _, e := range g.hub.engines() { // handshakes that were in flight
		e.close(closeDrain)
	}
	// Wait for the releases started by the closes, then retry failed ones.
	g.hub.waitReleases(ctx)
	g.retryReleases(ctx)
	g.cancel()
	if g.ctrl != nil {
		_ = g.ctrl.Unsubscribe()
	}
	if g.all != nil {
		_ = g.all.Unsubscribe()
	}
	if g.list != nil {
		_ = g.list.Unsubscribe()
	}
	if g.ips != nil {
		_ = g.ips.Unsubscribe()
	}
	if g.svc != nil {
		_ = g.svc.Stop()
	}
	_ = g.m.Close()
	g.wg.Wait()
	if shutdownErr != nil && !errors.Is(shutdownErr, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown http: %w", shutdownErr)
	}
	return nil
}

// addService makes the gateway discoverable like the other services: a
// micro service whose status endpoint (sb.gw.<id>.status) and stats tell
// its connection counts.
func (g *Gateway) addService() error {
	subj, err := subject.GatewayControl(g.id, subject.OpStatus)
	if err != nil {
		return fmt.Errorf("status subject: %w", err)
	}
	g.svc, err = micro.AddService(g.nc, micro.Config{
		Name:         ServiceName,
		Version:      Version,
		Description:  "Switchboard Socket.IO gateway",
		Metadata:     map[string]string{"gateway": g.id},
		StatsHandler: func(*micro.Endpoint) any { return g.Status() },
		Endpoint: &micro.EndpointConfig{
			Subject: subj,
			Handler: micro.HandlerFunc(func(r micro.Request) { _ = r.RespondJSON(g.Status()) }),
		},
	})
	if err != nil {
		return fmt.Errorf("add micro service: %w", err)
	}
	return nil
}

// Status is the gateway's connection counts.
func (g *Gateway) Status() api.GatewayStatus {
	n, _ := g.hub.summary()
	return api.GatewayStatus{ID: g.id, Engines: g.hub.engineCount(), Connections: n}
}

// newID returns 20 random base64url characters (120 bits).
func newID() string {
	var b [15]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
