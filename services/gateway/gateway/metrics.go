package gateway

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's Prometheus series. Counting costs one atomic
// add; gauges are read at scrape time.
type metrics struct {
	handshakes  *prometheus.CounterVec // Socket.IO CONNECTs by result
	refusals    *prometheus.CounterVec // engine connections refused, by reason
	in          prometheus.Counter     // client events put on NATS
	out         prometheus.Counter     // events written to sockets
	slow        prometheus.Counter     // connections closed as slow consumers
	authCached  prometheus.Counter     // tokens taken from the auth cache
	refreshes   prometheus.Counter     // tokens replaced by refreshToken
	requests    *prometheus.HistogramVec
	engines     prometheus.GaugeFunc
	sockets     prometheus.GaugeFunc
	collectable []prometheus.Collector
}

// Handshake results (the label of switchboard_gateway_handshakes_total).
var handshakeResults = map[string]string{
	"":                  "ok",
	msgNoToken:          "no_token",
	msgBadScheme:        "unauthorized",
	msgUnauthorized:     "unauthorized",
	msgTooMany:          "too_many",
	msgUnavailable:      "unavailable",
	msgInvalidNamespace: "invalid",
	msgInvalidDevice:    "invalid",
	msgTooManyAttempts:  "rate_limited",
}

// NATS request kinds (the label of switchboard_gateway_nats_request_seconds).
const (
	reqVerify = "verify"
	reqAdmit  = "admit"
	reqEvent  = "event"
)

func newMetrics(g *Gateway) *metrics {
	m := &metrics{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_gateway_handshakes_total",
			Help: "Socket.IO CONNECTs by result: ok, no_token, unauthorized, too_many, unavailable, invalid, rate_limited.",
		}, []string{"result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_gateway_engine_refusals_total",
			Help: "Engine.IO connections refused before any Socket.IO traffic, by reason: busy, per_ip, rate.",
		}, []string{"reason"}),
		in: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_gateway_messages_in_total",
			Help: "Client events put on NATS.",
		}),
		out: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_gateway_messages_out_total",
			Help: "Events written to sockets (one per recipient).",
		}),
		slow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_gateway_slow_client_closes_total",
			Help: "Connections closed because their send queue was full or their deliveries were dropped.",
		}),
		authCached: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_gateway_auth_cache_hits_total",
			Help: "Tokens whose identity came from the verification cache, without asking auth.",
		}),
		refreshes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_gateway_token_refreshes_total",
			Help: "Tokens of live sockets replaced by refreshToken.",
		}),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "switchboard_gateway_nats_request_seconds",
			Help:    "NATS request latency by kind: verify (auth), admit (presence), event (client events with an ack).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"kind"}),
	}
	m.engines = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "switchboard_gateway_engines",
		Help: "Open Engine.IO connections.",
	}, func() float64 { return float64(g.hub.engineCount()) })
	m.sockets = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "switchboard_gateway_connections",
		Help: "Admitted Socket.IO connections (sockets).",
	}, func() float64 { n, _ := g.hub.summary(); return float64(n) })
	for _, r := range handshakeResults {
		m.handshakes.WithLabelValues(r)
	}
	for _, r := range []string{"busy", "per_ip", "rate"} {
		m.refusals.WithLabelValues(r)
	}
	for _, k := range []string{reqVerify, reqAdmit, reqEvent} {
		m.requests.WithLabelValues(k)
	}
	m.collectable = []prometheus.Collector{m.handshakes, m.refusals, m.in, m.out, m.slow, m.authCached, m.refreshes, m.requests, m.engines, m.sockets}
	return m
}

// Collectors are the gateway's metrics, for the binary's registry.
func (g *Gateway) Collectors() []prometheus.Collector { return g.metrics.collectable }

// handshake counts one CONNECT answered with msg ("" admitted).
func (m *metrics) handshake(msg string) {
	r, ok := handshakeResults[msg]
	if !ok {
		r = "invalid"
	}
	m.handshakes.WithLabelValues(r).Inc()
}

// refused counts one engine connection refused with e.
func (m *metrics) refused(e *engineError) {
	r := "busy"
	switch *e {
	case errTooManyFromIP:
		r = "per_ip"
	case errHandshakeRate:
		r = "rate"
	}
	m.refusals.WithLabelValues(r).Inc()
}

// request observes one NATS request of kind that started at start.
func (m *metrics) request(kind string, start time.Time) {
	m.requests.WithLabelValues(kind).Observe(time.Since(start).Seconds())
}
