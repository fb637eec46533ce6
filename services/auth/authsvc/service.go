// Package authsvc is Switchboard's auth service: a NATS micro service that
// turns a client's token into a user id.
package authsvc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// ServiceName is the micro service name (nats micro ls).
const ServiceName = "switchboard-auth"

// Version is the micro service version.
const Version = "1.0.0"

// handlerTimeout bounds one verification (a Firebase key refresh included).
const handlerTimeout = 10 * time.Second

// flushTimeout bounds the wait for the server to confirm the subscriptions.
const flushTimeout = 5 * time.Second

// Service is a running auth service.
type Service struct {
	log      *slog.Logger
	nc       *nats.Conn
	verifier Verifier
	// stopVerifier ends the verifier's background work.
	stopVerifier context.CancelFunc
	svc          micro.Service
	verified     *prometheus.CounterVec // by result
	latency      prometheus.Histogram   // verification time
}

// Collectors are the service's metrics, for the binary's registry.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.verified, s.latency}
}

// Start validates cfg, builds the verifier and serves subject.AuthVerify on
// nc (queue group "q", so instances share the load).
func Start(ctx context.Context, log *slog.Logger, nc *nats.Conn, cfg Config, opts ...Option) (_ *Service, err error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if err := cfg.validate(o); err != nil {
		return nil, err
	}
	// The verifiers' background work (key refresh) ends with Stop, or now
	// if Start fails.
	vctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		if err != nil {
			stop()
		}
	}()
	v, err := newVerifier(vctx, log, cfg)
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	s := &Service{log: log, nc: nc, verifier: v, stopVerifier: stop,
		verified: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_auth_verifications_total",
			Help: "Token verifications by result: ok, rejected (Unauthorized), bad_request, error.",
		}, []string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchboard_auth_verification_seconds",
			Help:    "Time to verify one token.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
	}
	for _, r := range []string{"ok", "rejected", "bad_request", "error"} {
		s.verified.WithLabelValues(r)
	}
	svc, err := micro.AddService(nc, micro.Config{
		Name:        ServiceName,
		Version:     Version,
		Description: "Switchboard token verification",
	})
	if err != nil {
		return nil, fmt.Errorf("auth: add service: %w", err)
	}
	err = svc.AddEndpoint("verify",
		natsx.Handle(log, handlerTimeout, s.handleVerify),
		micro.WithEndpointSubject(subject.AuthVerify))
	if err != nil {
		return nil, errors.Join(fmt.Errorf("auth: add endpoint: %w", err), svc.Stop())
	}
	// Make sure the server has the subscriptions before reporting ready, so a
	// request sent right after Start finds a responder.
	if err = nc.FlushTimeout(flushTimeout); err != nil {
		return nil, errors.Join(fmt.Errorf("auth: flush: %w", err), svc.Stop())
	}
	s.svc = svc
	log.Info("auth service started", "verifier", cfg.Verifier, "subject", subject.AuthVerify)
	return s, nil
}

// newVerifier builds the verifier cfg selects.
func newVerifier(ctx context.Context, log *slog.Logger, cfg Config) (Verifier, error) {
	claims := claimPicker{names: cfg.Claims, max: cfg.MaxClaimsBytes}
	switch cfg.Verifier {
	case VerifierJWT:
		return newJWTVerifier(cfg.JWT, claims), nil
	case VerifierFirebase:
		return newFirebaseVerifier(ctx, cfg.Firebase, claims)
	default:
		return newOIDCVerifier(ctx, log, cfg.OIDC, claims, nil)
	}
}

// Stop stops serving: once it returns the server routes no more requests
// here; requests already received are still answered.
func (s *Service) Stop() error {
	defer s.stopVerifier()
	if err := s.svc.Stop(); err != nil {
		return fmt.Errorf("stop auth service: %w", err)
	}
	if s.nc.IsClosed() {
		return nil
	}
	if err := s.nc.FlushTimeout(flushTimeout); err != nil {
		return fmt.Errorf("stop auth service: flush: %w", err)
	}
	return nil
}

// handleVerify answers one api.VerifyRequest. The token is never logged.
func (s *Service) handleVerify(ctx context.Context, raw json.RawMessage) (api.VerifyReply, error) {
	if b := bytes.TrimLeft(raw, " \t\r\n"); len(b) == 0 || b[0] != '{' {
		s.verified.WithLabelValues("bad_request").Inc()
		return api.VerifyReply{}, natsx.Errorf(api.CodeBadRequest, "invalid request: want a JSON object")
	}
	var req api.VerifyRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		s.verified.WithLabelValues("bad_request").Inc()
		return api.VerifyReply{}, natsx.Errorf(api.CodeBadRequest, "invalid request: %v", err)
	}
	start := time.Now()
	reply, err := s.verifier.Verify(ctx, req.Token)
	s.latency.Observe(time.Since(start).Seconds())
	var rej *RejectError
	switch {
	case errors.As(err, &rej):
		s.verified.WithLabelValues("rejected").Inc()
		s.log.Debug("verify", "outcome", "rejected", "reason", rej.Reason)
		return api.VerifyReply{}, natsx.Errorf(api.CodeUnauthorized, "Unauthorized")
	case err != nil:
		s.verified.WithLabelValues("error").Inc()
		return api.VerifyReply{}, fmt.Errorf("verify: %w", err) // logged by natsx as a 500
	}
	s.verified.WithLabelValues("ok").Inc()
	s.log.Debug("verify", "outcome", "ok", "uid", reply.UserID)
	return reply, nil
}
