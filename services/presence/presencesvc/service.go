// Package presencesvc is Switchboard's presence service: it admits
// connections within the per-user limit (compare-and-set on JetStream KV, so
// the limit holds cluster-wide), releases them, tells every connection of a
// user about the user's other connections, serves the disconnectRequest
// client event and purges the connections of gateways that stop
// heartbeating.
package presencesvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// ServiceName is the micro service name (nats micro ls).
const ServiceName = "switchboard-presence"

// Version is the micro service version.
const Version = "0.1.0"

// opTimeout bounds the work done for one request or one purged socket.
const opTimeout = 5 * time.Second

// Limits applied to the descriptive fields of an admitted connection; longer
// values are cut (at a UTF-8 boundary).
const (
	maxIPLen        = 64
	maxUserAgentLen = 512
)

// Config configures the presence service.
type Config struct {
	// MaxConnectionsPerUser is the cluster-wide limit of live connections
	// of one user.
	MaxConnectionsPerUser int `koanf:"max_connections_per_user"`
	// GatewayTTL is how long a gateway may stay silent before its
	// connections are purged.
	GatewayTTL time.Duration `koanf:"gateway_ttl"`
	// Bucket is the JetStream KV bucket (created when missing).
	Bucket string `koanf:"bucket"`
	// Replicas of the bucket when it is created.
	Replicas int `koanf:"replicas"`
	// ConnectionsEvents sends the `connections` event to clients.
	ConnectionsEvents bool `koanf:"connections_events"`
	// ReconcileInterval is how often the index is compared with what each
	// live gateway reports (a digest of its socket ids). A gateway whose
	// digest differs at two checks in a row is asked for its sockets: slots
	// it does not hold are released, sockets it holds without a slot are
	// admitted (or disconnected when over the limit). Differences younger
	// than one interval are left alone (admits and releases in flight).
	ReconcileInterval time.Duration `koanf:"reconcile_interval"`
	// LimitClaim names a token claim (one of auth.claims) whose positive
	// integer value replaces MaxConnectionsPerUser for the connecting
	// user, up to LimitClaimMax. Empty: no claim is read.
	LimitClaim    string `koanf:"limit_claim"`
	LimitClaimMax int    `koanf:"limit_claim_max"`
}

// DefaultConfig returns the default settings.
func DefaultConfig() Config {
	return Config{
		MaxConnectionsPerUser: 3,
		GatewayTTL:            4 * time.Second,
		Bucket:                "sb_presence",
		Replicas:              1,
		ConnectionsEvents:     true,
		ReconcileInterval:     30 * time.Second,
		LimitClaimMax:         100,
	}
}

func (c Config) validate() error {
	switch {
	case c.MaxConnectionsPerUser < 1:
		return fmt.Errorf("max_connections_per_user must be at least 1, got %d", c.MaxConnectionsPerUser)
	case c.GatewayTTL < 100*time.Millisecond:
		return fmt.Errorf("gateway_ttl must be at least 100ms, got %s", c.GatewayTTL)
	case c.Bucket == "":
		return errors.New("bucket must be set")
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("replicas must be 1..5, got %d", c.Replicas)
	case c.ReconcileInterval < 100*time.Millisecond:
		return fmt.Errorf("reconcile_interval must be at least 100ms, got %s", c.ReconcileInterval)
	case c.LimitClaim != "" && c.LimitClaimMax < 1:
		return fmt.Errorf("limit_claim_max must be at least 1, got %d", c.LimitClaimMax)
	}
	return nil
}

// Service is a running presence service instance. Any number of instances
// may share one bucket.
type Service struct {
	log       *slog.Logger
	nc        *nats.Conn
	cfg       Config
	kv        jetstream.KeyValue
	kvPrefix  string // subject prefix of the bucket's keys
	markerTTL time.Duration
	svc       micro.Service
	subs      []*nats.Subscription
	hbSub     *nats.Subscription // gateway heartbeats
	metrics   *metrics

	userLocks [64]sync.Mutex // striped by user id, see userLock

	gwMu     sync.Mutex
	lastSeen map[string]time.Time // gateway id -> last heartbeat (or grace start)
	reported map[string]uint64    // gateway id -> socket digest of its last heartbeat
	mismatch map[string]int       // gateway id -> checks in a row its digest differed

	ctx      context.Context // cancelled by Stop
	cancel   context.CancelFunc
	done     chan struct{} // closed when the sweeper ends
	recDone  chan struct{} // closed when the reconciler ends
	stopOnce sync.Once
	stopErr  error
}

// Start opens (or creates) the bucket, learns the gateways that hold
// connections, and serves the micro endpoints, the disconnectRequest event
// and the gateway heartbeats until Stop. ctx bounds the start only.
func Start(ctx context.Context, log *slog.Logger, nc *nats.Conn, cfg Config) (*Service, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("presence config: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	kv, mttl, err := openBucket(ctx, js, cfg)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		log:       log,
		nc:        nc,
		cfg:       cfg,
		kv:        kv,
		kvPrefix:  "$KV." + cfg.Bucket + ".",
		markerTTL: mttl,
		lastSeen:  map[string]time.Time{},
		reported:  map[string]uint64{},
		mismatch:  map[string]int{},
		ctx:       sctx,
		cancel:    cancel,
		done:      make(chan struct{}),
		recDone:   make(chan struct{}),
	}
	s.metrics = newMetrics(s)
	if err := s.serve(ctx); err != nil {
		close(s.done)
		close(s.recDone)
		return nil, errors.Join(err, s.Stop())
	}
	// Once Start returns, requests from other connections find the
	// endpoints: the server has processed the subscriptions.
	if err := nc.FlushTimeout(opTimeout); err != nil {
		close(s.done)
		close(s.recDone)
		return nil, errors.Join(fmt.Errorf("flush subscriptions: %w", err), s.Stop())
	}
	// Heartbeats sent while this instance was cut off from NATS are lost:
	// after a reconnect every gateway gets a full TTL of grace again, so
	// that live gateways are not purged for the silence it did not hear.
	prevRe := nc.ReconnectHandler()
	nc.SetReconnectHandler(func(c *nats.Conn) {
		if prevRe != nil {
			prevRe(c)
		}
		s.graceAll(time.Now())
	})
	go s.sweepLoop()
	go s.reconcileLoop()
	return s, nil
}

// graceAll restarts the grace period of every known gateway.
func (s *Service) graceAll(now time.Time) {
	s.gwMu.Lock()
	for gw := range s.lastSeen {
		s.lastSeen[gw] = now
	}
	s.gwMu.Unlock()
}

func (s *Service) serve(ctx context.Context) error {
	// Subscribe to heartbeats before listing the index so that no gateway
	// is missed in between.
	if err := s.subscribe(subject.GatewayHeartbeat, "", s.onHeartbeat); err != nil {
		return err
	}
	s.hbSub = s.subs[len(s.subs)-1]
	if err := s.subscribe(subject.EventConnected, "", s.onConnected); err != nil {
		return err
	}
	if err := s.discover(ctx, time.Now()); err != nil {
		return err
	}
	in, err := subject.In(api.EventDisconnectRequest)
	if err != nil {
		return fmt.Errorf("disconnectRequest subject: %w", err)
	}
	if err := s.subscribe(in, "presence", s.onDisconnectRequest); err != nil {
		return err
	}
	svc, err := micro.AddService(s.nc, micro.Config{
		Name:        ServiceName,
		Version:     Version,
		Description: "Switchboard connection slots and presence",
	})
	if err != nil {
		return fmt.Errorf("add micro service: %w", err)
	}
	s.svc = svc
	endpoints := []struct {
		name, subj string
		h          micro.Handler
	}{
		{"admit", subject.PresenceAdmit, natsx.Handle(s.log, opTimeout, s.countAdmit)},
		{"release", subject.PresenceRelease, natsx.Handle(s.log, opTimeout, s.releaseRequest)},
		{"list", subject.PresenceList, natsx.Handle(s.log, opTimeout, s.list)},
		{"reset", subject.PresenceReset, natsx.Handle(s.log, opTimeout, s.reset)},
	}
	for _, e := range endpoints {
		if err := svc.AddEndpoint(e.name, e.h, micro.WithEndpointSubject(e.subj)); err != nil {
			return fmt.Errorf("add endpoint %s: %w", e.name, err)
		}
	}
	return nil
}

func (s *Service) subscribe(subj, queue string, h nats.MsgHandler) error {
	var sub *nats.Subscription
	var err error
	if queue == "" {
		sub, err = s.nc.Subscribe(subj, h)
	} else {
		sub, err = s.nc.QueueSubscribe(subj, queue, h)
	}
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", subj, err)
	}
	s.subs = append(s.subs, sub)
	return nil
}

// Stop ends the endpoints, subscriptions and the sweeper. The NATS
// connection stays open (it belongs to the caller).
func (s *Service) Stop() error {
	s.stopOnce.Do(func() {
		var errs []error
		if s.svc != nil {
			if err := s.svc.Stop(); err != nil {
				errs = append(errs, fmt.Errorf("stop micro service: %w", err))
			}
		}
		for _, sub := range s.subs {
			if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
				errs = append(errs, fmt.Errorf("unsubscribe %s: %w", sub.Subject, err))
			}
		}
		s.cancel()
		<-s.done
		<-s.recDone
		s.stopErr = errors.Join(errs...)
	})
	return s.stopErr
}

// ---- micro endpoints ----

func (s *Service) admit(ctx context.Context, req api.AdmitRequest) (api.AdmitReply, error) {
	limit := s.cfg.limitOf(req.Conn.Claims)
	c, err := normalize(req.Conn)
	if err != nil {
		return api.AdmitReply{}, err
	}
	idx, err := indexKey(c.Gateway, c.SocketID)
	if err != nil {
		return api.AdmitReply{}, natsx.Errorf(api.CodeBadRequest, "invalid gateway or socketId")
	}
	s.learnGateway(c.Gateway, time.Now())
	// The index goes first: whatever fails later, a slot never exists
	// without the index that lets a dead gateway's purge find it.
	if _, err := s.kv.PutString(ctx, idx, c.UserID); err != nil {
		return api.AdmitReply{}, fmt.Errorf("write %s: %w", idx, err)
	}
	mu := s.userLock(c.UserID)
	mu.Lock()
	defer mu.Unlock()
	u, err := s.update(ctx, c.UserID, func(conns []api.Conn) ([]api.Conn, bool, error) {
		if indexOf(conns, c.SocketID) >= 0 {
			return conns, false, nil // already admitted
		}
		if !req.Deadline.IsZero() && time.Now().After(req.Deadline) {
			return conns, false, natsx.Errorf(api.CodeTimeout, "admit past its deadline")
		}
		if len(conns) >= limit {
			return conns, false, natsx.Errorf(api.CodeTooMany, "Too many connections")
		}
		return append(slices.Clip(conns), c), true, nil
	})
	if code := natsx.CodeOf(err); code == api.CodeTooMany || code == api.CodeTimeout {
		if derr := s.remove(ctx, idx); derr != nil {
			s.log.Warn("remove index of refused socket", "key", idx, "err", derr)
		}
	}
	if err != nil {
		return api.AdmitReply{}, err
	}
	if u.changed {
		s.changed(u, c, true)
	}
	return api.AdmitReply{Connections: len(u.conns)}, nil
}

// reset releases every socket of a gateway that is starting (it holds
// none yet).
func (s *Service) reset(_ context.Context, req api.ResetRequest) (api.ResetReply, error) {
	if _, err := keyToken(req.Gateway); err != nil || req.Gateway == "" {
		return api.ResetReply{}, natsx.Errorf(api.CodeBadRequest, "invalid gateway")
	}
	n, err := s.purgeGateway(req.Gateway, time.Time{})
	if err != nil {
		return api.ResetReply{}, err
	}
	if n > 0 {
		s.log.Info("released the sockets of a restarted gateway", "gateway", req.Gateway, "sockets", n)
	}
	s.learnGateway(req.Gateway, time.Now())
	return api.ResetReply{Released: n}, nil
}

func (s *Service) releaseRequest(ctx context.Context, req api.ReleaseRequest) (api.ReleaseReply, error) {
	if req.SocketID == "" || req.UserID == "" {
		return api.ReleaseReply{}, natsx.Errorf(api.CodeBadRequest, "socketId and userId are required")
	}
	_, released, err := s.release(ctx, req.UserID, req.SocketID)
	if err != nil {
		return api.ReleaseReply{}, err
	}
	return api.ReleaseReply{Released: released}, nil
}

func (s *Service) list(ctx context.Context, req api.ListRequest) (api.ListReply, error) {
	if req.UserID == "" {
		return api.ListReply{}, natsx.Errorf(api.CodeBadRequest, "userId is required")
	}
	key, err := userKey(req.UserID)
	if err != nil {
		return api.ListReply{}, natsx.Errorf(api.CodeBadRequest, "invalid userId")
	}
	conns, _, err := s.load(ctx, key)
	if err != nil {
		return api.ListReply{}, err
	}
	if conns == nil {
		conns = []api.Conn{}
	}
	return api.ListReply{Connections: conns}, nil
}

// release removes one socket of a user (idempotent). It returns the removed
// connection and whether there was one.
func (s *Service) release(ctx context.Context, uid, socketID string) (api.Conn, bool, error) {
	mu := s.userLock(uid)
	mu.Lock()
	defer mu.Unlock()
	var gone api.Conn
	u, err := s.update(ctx, uid, func(conns []api.Conn) ([]api.Conn, bool, error) {
		i := indexOf(conns, socketID)
		if i < 0 {
			return conns, false, nil
		}
		gone = conns[i]
		return slices.Delete(slices.Clone(conns), i, i+1), true, nil
	})
	if err != nil || !u.changed {
		return api.Conn{}, false, err
	}
	if idx, err := indexKey(gone.Gateway, gone.SocketID); err == nil {
		if err := s.remove(ctx, idx); err != nil {
			s.log.Warn("remove index of released socket", "key", idx, "err", err)
		}
	}
	s.metrics.releases.Inc()
	s.changed(u, gone, false)
	return gone, true, nil
}

// userLock returns the lock that orders the changes (and so the
// `connections` updates) of one user within this instance.
func (s *Service) userLock(uid string) *sync.Mutex {
	h := fnv.New32a()
	_, _ = h.Write([]byte(uid)) // never fails
	return &s.userLocks[h.Sum32()%uint32(len(s.userLocks))]
}

// normalize validates an admitted connection and fills its defaults.
func normalize(c api.Conn) (api.Conn, error) {
	if c.SocketID == "" || c.UserID == "" || c.Gateway == "" {
		return c, natsx.Errorf(api.CodeBadRequest, "conn.socketId, conn.userId and conn.gateway are required")
	}
	for _, id := range []string{c.SocketID, c.UserID, c.Gateway, c.DeviceID} {
		if len(id) > subject.MaxIDLen {
			return c, natsx.Errorf(api.CodeBadRequest, "conn id longer than %d bytes", subject.MaxIDLen)
		}
	}
	if c.DeviceID == "" {
		c.DeviceID = c.SocketID
	}
	c.IP = truncate(c.IP, maxIPLen)
	c.UserAgent = truncate(c.UserAgent, maxUserAgentLen)
	if c.CreatedAt.IsZero() {
		c.CreatedAt = time.Now()
	}
	c.CreatedAt = c.CreatedAt.UTC().Truncate(time.Millisecond)
	c.Claims = nil // read for the limit, never stored
	return c, nil
}

// limitOf is the connection limit of a user whose token carried claims:
// the limit claim's value when it is an integer from 1 to LimitClaimMax
// (larger ones count as LimitClaimMax), else MaxConnectionsPerUser.
func (c Config) limitOf(claims json.RawMessage) int {
	if c.LimitClaim == "" || len(claims) == 0 {
		return c.MaxConnectionsPerUser
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(claims, &m) != nil {
		return c.MaxConnectionsPerUser
	}
	var n float64
	if json.Unmarshal(m[c.LimitClaim], &n) != nil || n < 1 || n != math.Trunc(n) {
		return c.MaxConnectionsPerUser
	}
	return int(min(n, float64(c.LimitClaimMax)))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
