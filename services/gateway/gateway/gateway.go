// Package gateway moves frames between Socket.IO clients (Engine.IO v4 over
// WebSocket, served by melody) and NATS subjects. It holds no state of its own
// beyond the live connections: identities come from the auth service,
// connection slots from presence, everything else from whoever publishes on
// sb.out.*.
package gateway

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/gorilla/websocket"
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

// Engine.IO handshake errors (as the reference server sends them).
var (
	errTransportUnknown = engineError{400, 0, "Transport unknown"}
	errSessionUnknown   = engineError{400, 1, "Session ID unknown"}
	errBadMethod        = engineError{400, 2, "Bad handshake method"}
	errBadRequest       = engineError{400, 3, "Bad request"}
	errForbidden        = engineError{403, 4, "Forbidden"}
	errBadVersion       = engineError{400, 5, "Unsupported protocol version"}
	// Admission refusals (not in the reference server).
	errBusy          = engineError{503, 3, "Server busy"}
	errTooManyFromIP = engineError{429, 3, "Too many connections from this address"}
	errHandshakeRate = engineError{429, 3, "Too many handshakes from this address"}
)

type engineError struct {
	status  int
	code    int
	message string
}

func (e engineError) json() []byte {
	b, _ := json.Marshal(map[string]any{"code": e.code, "message": e.message})
	return b
}

func (e engineError) write(w http.ResponseWriter) {
	writeReply(w, engineErrReply(e))
}

func writeReply(w http.ResponseWriter, r httpReply) {
	w.Header().Set("Content-Type", r.contentType)
	w.WriteHeader(r.status)
	_, _ = w.Write(r.body)
}

// serveEngine is the Engine.IO endpoint: WebSocket handshakes and upgrades,
// and long-polling requests, answered here or forwarded over NATS to the
// gateway that holds the session.
func (g *Gateway) serveEngine(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != g.cfg.Path {
		http.NotFound(w, r)
		return
	}
	if !g.origins.allow(r) {
		errForbidden.write(w)
		return
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Add("Vary", "Origin")
	}
	if r.Method == http.MethodOptions {
		h := w.Header()
		h.Set("Access-Control-Allow-Methods", "GET, POST")
		if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
			h.Set("Access-Control-Allow-Headers", req)
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	q := r.URL.Query()
	sid := q.Get("sid")
	switch {
	case q.Get("EIO") != "4":
		errBadVersion.write(w)
	case q.Get("transport") == "websocket":
		if r.Method != http.MethodGet {
			errBadMethod.write(w)
			return
		}
		if sid == "" {
			if e := g.admitEngine(w, r); e != nil {
				g.acceptWebSocket(w, r, e, false)
			}
			return
		}
		e := g.hub.engine(sid)
		if e == nil {
			g.relayUpgrade(w, r, sid) // held by another gateway, if any
			return
		}
		if !e.startUpgrade() {
			// Already upgraded, or upgrading: as the reference server does,
			// the WebSocket is accepted and closed at once.
			g.acceptAndClose(w, r)
			return
		}
		g.acceptWebSocket(w, r, e, true)
	case q.Get("transport") == "polling":
		switch {
		case sid == "" && r.Method == http.MethodGet:
			e := g.admitEngine(w, r)
			if e == nil {
				return
			}
			e.attach(newPollTransport(e, g.cfg.SendQueue, g.cfg.SendQueueBytes))
			if err := g.hub.addForward(e); err != nil {
				g.log.Warn("engine forwarding", "err", err)
			}
			writeReply(w, e.servePoll(r.Context(), http.MethodGet, nil, nil))
		case sid == "":
			errBadMethod.write(w)
		case r.Method != http.MethodGet && r.Method != http.MethodPost:
			errBadMethod.write(w)
		default:
			rc := http.NewResponseController(w)
			if r.Method == http.MethodPost {
				_ = rc.SetReadDeadline(time.Now().Add(g.cfg.BodyTimeout))
			}
			body, err := readBody(r, g.cfg.MaxPayload)
			if r.Method == http.MethodPost {
				_ = rc.SetReadDeadline(time.Time{})
			}
			if err != nil { // the connection's input is unusable after this
				w.Header().Set("Connection", "close")
				errBadRequest.write(w)
				return
			}
			if e := g.hub.engine(sid); e != nil {
				writeReply(w, e.servePoll(r.Context(), r.Method, body, nil))
				return
			}
			writeReply(w, g.forward(r.Context(), sid, r.Method, body))
		}
	default:
		errTransportUnknown.write(w)
	}
}

// acceptAndClose completes a WebSocket handshake and closes the connection
// at once (normal closure).
func (g *Gateway) acceptAndClose(w http.ResponseWriter, r *http.Request) {
	c, err := g.m.Upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered the request
	}
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	_ = c.Close()
}

func (g *Gateway) acceptWebSocket(w http.ResponseWriter, r *http.Request, e *engine, probe bool) {
	keys := map[string]any{engineKey: e, queuedKey: g.newQueued()}
	if probe {
		keys[probeKey] = true
	}
	if err := g.m.HandleRequestWithKeys(w, r, keys); err != nil {
		g.log.Debug("websocket upgrade", "err", err)
		if probe {
			e.abortUpgrade(nil)
		} else if !e.attached() {
			g.adm.release(e.ip) // never became an engine connection
		}
	}
}

// wsPingPeriod is how often melody pings a WebSocket (it closes one that
// does not answer within a minute more).
const wsPingPeriod = 5 * time.Minute

const (
	engineKey = "engine"
	probeKey  = "probe"
	queuedKey = "queued" // *queuedBytes of the session
)

// onWSSent uncounts a frame melody wrote.
func (g *Gateway) onWSSent(s *melody.Session, b []byte) {
	if q, ok := s.Keys[queuedKey].(*queuedBytes); ok {
		q.sent(len(b))
	}
}

func (g *Gateway) newQueued() *queuedBytes { return &queuedBytes{limit: int64(g.cfg.SendQueueBytes)} }

func engineOf(s *melody.Session) *engine { return s.Keys[engineKey].(*engine) }

func (g *Gateway) onWSMessage(s *melody.Session, b []byte, binary bool) {
	if p, ok := relayOf(s); ok {
		p.toHolder(b, binary)
		return
	}
	engineOf(s).onWSFrame(s, b, binary)
}

func (g *Gateway) onWSDisconnect(s *melody.Session) {
	if p, ok := relayOf(s); ok {
		p.toHolderClose(1000)
		return
	}
	engineOf(s).onWSClosed(s)
}

func (g *Gateway) onWSConnect(s *melody.Session) {
	if p, ok := relayOf(s); ok {
		p.attach(s)
		return
	}
	e := engineOf(s)
	tr := &wsTransport{s: s, broken: &e.broken, queued: s.Keys[queuedKey].(*queuedBytes), onSlow: e.slow}
	if _, probe := s.Keys[probeKey]; probe {
		e.probeConnected(tr)
		return
	}
	e.attach(tr)
}

func (g *Gateway) onWSError(s *melody.Session, err error) {
	if errors.Is(err, melody.ErrMessageBufferFull) {
		// The bounded send queue overflowed: the client is too slow. Close the
		// connection rather than drop messages while it stays open.
		if p, ok := relayOf(s); ok {
			p.slow()
			return
		}
		engineOf(s).slow()
		return
	}
	if errors.Is(err, websocket.ErrReadLimit) {
		// The close 1009 is sent. Read and drop the rest of the oversized
		// frame (bounded) so that closing does not reset the connection
		// under the client before it reads the close code.
		nc := s.WebsocketConnection().UnderlyingConn()
		_ = nc.SetReadDeadline(time.Now().Add(time.Second))
		_, _ = io.CopyN(io.Discard, nc, 2*int64(g.cfg.MaxPayload)+65536)
		return
	}
	if errors.Is(err, melody.ErrWriteClosed) || errors.Is(err, melody.ErrSessionClosed) {
		return
	}
	g.log.Debug("websocket", "err", err)
}

// subEntry is what a delivery subscription's messages go to, and what to
// do when NATS dropped one of them (nil: nothing).
type subEntry struct {
	fn     func(*nats.Msg)
	onDrop func()
}

// subscribe adds a NATS subscription whose messages are handled by fn on a
// dispatcher shard chosen by subject (so one subject's messages stay in
// order). There is no goroutine per subscription. A message dropped
// because the shard was full calls onDrop.
func (g *Gateway) subscribe(subj string, fn func(*nats.Msg), onDrop func()) (*nats.Subscription, error) {
	h := fnv.New32a()
	_, _ = h.Write([]byte(subj))
	ch := g.shards[int(h.Sum32()%uint32(len(g.shards)))]
	g.subsMu.Lock()
	defer g.subsMu.Unlock()
	sub, err := g.nc.ChanSubscribe(subj, ch)
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subj, err)
	}
	g.subs[sub] = subEntry{fn, onDrop}
	return sub, nil
}

// dropped acts on a message NATS dropped for sub.
func (g *Gateway) dropped(sub *nats.Subscription) {
	if sub == g.all {
		g.log.Error("broadcast deliveries dropped: closing every connection so that clients resynchronise")
		for _, e := range g.hub.engines() {
			e.slow()
		}
		return
	}
	g.subsMu.RLock()
	x, ok := g.subs[sub]
	g.subsMu.RUnlock()
	g.log.Warn("deliveries dropped: the gateway is overloaded", "subject", sub.Subject)
	if ok && x.onDrop != nil {
		go x.onDrop()
	}
}

func (g *Gateway) unsubscribe(sub *nats.Subscription) {
	if sub == nil {
		return
	}
	g.subsMu.Lock()
	delete(g.subs, sub)
	g.subsMu.Unlock()
	if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		g.log.Debug("unsubscribe", "subject", sub.Subject, "err", err)
	}
}

func (g *Gateway) dispatch(ch chan *nats.Msg) {
	for {
		select {
		case <-g.ctx.Done():
			return
		case m := <-ch:
			g.subsMu.RLock()
			x := g.subs[m.Sub]
			g.subsMu.RUnlock()
			if x.fn != nil {
				x.fn(m)
			}
		}
	}
}

func (g *Gateway) heartbeatLoop() {
	t := time.NewTicker(g.cfg.HeartbeatInterval)
	defer t.Stop()
	g.publishHeartbeat()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-t.C:
			g.publishHeartbeat()
			g.publishAddresses()
		}
	}
}

// releaseLoop retries failed releases, apart from the heartbeats (a slow
// presence must not delay them past gateway_ttl).
func (g *Gateway) releaseLoop() {
	t := time.NewTicker(g.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-t.C:
			g.retryReleases(g.ctx)
		}
	}
}

// publishAddresses tells the other gateways how many engines the busiest
// client addresses hold here.
func (g *Gateway) publishAddresses() {
	b, _ := json.Marshal(api.AddressReport{Gateway: g.id, Engines: g.adm.report()})
	if err := g.nc.Publish(subject.GatewayAddresses, b); err != nil {
		g.log.Debug("publish address report", "err", err)
	}
}

// onAddresses takes in another gateway's address report.
func (g *Gateway) onAddresses(m *nats.Msg) {
	var r api.AddressReport
	if err := json.Unmarshal(m.Data, &r); err != nil || r.Gateway == "" || r.Gateway == g.id {
		return
	}
	g.adm.learn(r.Gateway, r.Engines, time.Now())
}

func (g *Gateway) publishHeartbeat() {
	n, digest := g.hub.summary()
	b, _ := json.Marshal(api.Heartbeat{Gateway: g.id, Sockets: n, Digest: digest})
	if err := g.nc.Publish(subject.GatewayHeartbeat, b); err != nil {
		g.log.Warn("publish heartbeat", "err", err)
	}
}

// release frees a socket's slot in presence. Failures are kept and retried
// with every heartbeat until presence confirms.
func (g *Gateway) release(req api.ReleaseRequest) {
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.RequestTimeout)
	defer cancel()
	if _, err := natsx.Request[api.ReleaseReply](ctx, g.nc, subject.PresenceRelease, req); err != nil {
		g.log.Warn("release slot failed, will retry", "socket", req.SocketID, "err", err)
		g.relMu.Lock()
		g.releases[req.SocketID] = req
		g.relMu.Unlock()
	}
}

func (g *Gateway) retryReleases(ctx context.Context) {
	g.relMu.Lock()
	pending := make([]api.ReleaseRequest, 0, len(g.releases))
	for _, r := range g.releases {
		pending = append(pending, r)
	}
	g.relMu.Unlock()
	// Side by side, and each given at most two heartbeats, so that a release
	// left hanging by an outage holds back neither the others nor the next
	// round once presence answers again.
	timeout := min(g.cfg.RequestTimeout, max(2*g.cfg.HeartbeatInterval, time.Second))
	var wg sync.WaitGroup
	sem := make(chan struct{}, releaseParallel)
	for _, r := range pending {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			rctx, cancel := context.WithTimeout(ctx, timeout)
			_, err := natsx.Request[api.ReleaseReply](rctx, g.nc, subject.PresenceRelease, r)
			cancel()
			if err == nil {
				g.relMu.Lock()
				delete(g.releases, r.SocketID)
				g.relMu.Unlock()
			}
		})
	}
	wg.Wait()
}

// releaseParallel bounds the release retries in flight at once.
const releaseParallel = 32

// readmit re-registers every local socket with presence after a NATS
// reconnect: while this gateway was cut off, presence may have purged its
// sockets as those of a dead gateway. Admit is idempotent; a socket that no
// longer fits under the user's limit is disconnected.
func (g *Gateway) readmit() {
	g.publishHeartbeat()
	for _, e := range g.hub.engines() {
		e.mu.Lock()
		var socks []*socket
		for _, s := range e.sockets {
			if s.state == stateConnected {
				socks = append(socks, s)
			}
		}
		e.mu.Unlock()
		for _, s := range socks {
			if g.beforeReadmit != nil {
				g.beforeReadmit(s)
			}
			var err error
			// Services may come back after this gateway: retry while none answers.
			for attempt := 1; attempt <= 10; attempt++ {
				ctx, cancel := context.WithTimeout(g.ctx, g.cfg.RequestTimeout)
				deadline, _ := ctx.Deadline()
				_, err = natsx.Request[api.AdmitReply](ctx, g.nc, subject.PresenceAdmit, api.AdmitRequest{Conn: s.conn, Deadline: deadline})
				cancel()
				if !errors.Is(err, natsx.ErrUnavailable) || g.ctx.Err() != nil {
					break
				}
				time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
			}
			switch {
			case natsx.CodeOf(err) == api.CodeTooMany:
				g.log.Info("socket over the limit after reconnect, disconnecting", "socket", s.id)
				e.kick(s)
			case err != nil:
				g.log.Warn("readmit socket", "socket", s.id, "err", err)
			case !s.isConnected():
				// Closed while this readmit ran (its release may have come
				// first): free the slot the readmit took again.
				g.release(api.ReleaseRequest{SocketID: s.id, UserID: s.conn.UserID})
			}
		}
	}
}

// maxSocketsPage bounds one page of onSocketsRequest.
const maxSocketsPage = 1000

// onSocketsRequest answers presence's reconciliation with a page of this
// gateway's sockets.
func (g *Gateway) onSocketsRequest(m *nats.Msg) {
	if !subject.IsInbox(m.Reply) {
		return
	}
	var req api.GatewaySocketsRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		g.respondError(m.Reply, api.CodeBadRequest, "invalid request")
		return
	}
	limit := req.Limit
	if limit <= 0 || limit > maxSocketsPage {
		limit = maxSocketsPage
	}
	conns, more := g.hub.page(req.After, limit)
	b, _ := json.Marshal(api.GatewaySocketsReply{Conns: conns, More: more})
	if err := m.Respond(b); err != nil {
		g.log.Debug("answer sockets request", "err", err)
	}
}

func (g *Gateway) onDisconnectOrder(m *nats.Msg) {
	var o api.DisconnectOrder
	if err := json.Unmarshal(m.Data, &o); err != nil || o.SocketID == "" {
		g.log.Warn("invalid disconnect order", "err", err)
		return
	}
	if s := g.hub.socket(o.SocketID); s != nil {
		g.log.Info("disconnecting socket on order", "socket", o.SocketID, "reason", o.Reason)
		s.e.kick(s)
	}
}

// newID returns 20 random base64url characters (120 bits).
func newID() string {
	var b [15]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
