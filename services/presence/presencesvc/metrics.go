package presencesvc

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
)

// metrics are the presence service's Prometheus series.
type metrics struct {
	admissions *prometheus.CounterVec // by result
	admitTime  prometheus.Histogram
	releases   prometheus.Counter
	purges     prometheus.Counter // dead gateways purged
	purged     prometheus.Counter // sockets released by purges
	gateways   prometheus.GaugeFunc
}

// Admission results.
const (
	admitOK      = "admitted"
	admitTooMany = "too_many"
	admitLate    = "past_deadline"
	admitBad     = "bad_request"
	admitFailed  = "error"
)

func newMetrics(s *Service) *metrics {
	m := &metrics{
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_presence_admissions_total",
			Help: "Admission requests by result: admitted (again, for a socket already admitted, too), too_many, past_deadline, bad_request, error.",
		}, []string{"result"}),
		admitTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchboard_presence_admit_seconds",
			Help:    "Time to answer one admission (KV reads and compare-and-set writes).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		releases: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_presence_releases_total",
			Help: "Connection slots released (sockets closed, purges, disconnect orders).",
		}),
		purges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_presence_gateway_purges_total",
			Help: "Silent gateways whose sockets this instance released.",
		}),
		purged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_presence_purged_sockets_total",
			Help: "Sockets released by purges of silent gateways.",
		}),
	}
	m.gateways = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "switchboard_presence_gateways",
		Help: "Gateways this instance hears from (or waits to purge).",
	}, func() float64 {
		s.gwMu.Lock()
		defer s.gwMu.Unlock()
		return float64(len(s.lastSeen))
	})
	for _, r := range []string{admitOK, admitTooMany, admitLate, admitBad, admitFailed} {
		m.admissions.WithLabelValues(r)
	}
	return m
}

// Collectors are the service's metrics, for the binary's registry.
func (s *Service) Collectors() []prometheus.Collector {
	m := s.metrics
	return []prometheus.Collector{m.admissions, m.admitTime, m.releases, m.purges, m.purged, m.gateways}
}

// countAdmit wraps the admit endpoint with its metrics.
func (s *Service) countAdmit(ctx context.Context, req api.AdmitRequest) (api.AdmitReply, error) {
	start := time.Now()
	reply, err := s.admit(ctx, req)
	s.metrics.admitTime.Observe(time.Since(start).Seconds())
	result := admitOK
	switch code := natsx.CodeOf(err); {
	case err == nil:
	case code == api.CodeTooMany:
		result = admitTooMany
	case code == api.CodeTimeout:
		result = admitLate
	case code == api.CodeBadRequest:
		result = admitBad
	default:
		result = admitFailed
	}
	s.metrics.admissions.WithLabelValues(result).Inc()
	return reply, err
}
