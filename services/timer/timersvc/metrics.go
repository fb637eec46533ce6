package timersvc

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-rt/switchboard/pkg/api"
)

// collector reads the instance's state at each scrape: nothing is counted
// twice, and a tick costs no more than it did.
type collector struct {
	s                                  *Service
	active, partitions, members, ticks *prometheus.Desc
	lateness                           *prometheus.Desc
	batches, batched                   *prometheus.Desc
}

var _ prometheus.Collector = (*collector)(nil)

// Collectors are the service's metrics, for the binary's registry.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{&collector{
		s:          s,
		active:     prometheus.NewDesc("switchboard_timer_active", "Running timers in the partitions this instance drives.", nil, nil),
		partitions: prometheus.NewDesc("switchboard_timer_partitions_owned", "Partitions whose lease this instance holds.", nil, nil),
		members:    prometheus.NewDesc("switchboard_timer_members", "Live timer instances this instance sees (itself included).", nil, nil),
		ticks:      prometheus.NewDesc("switchboard_timer_ticks_total", "Ticks this instance sent.", nil, nil),
		lateness:   prometheus.NewDesc("switchboard_timer_tick_lateness_seconds", "How late each tick left this instance, against its due time.", nil, nil),
		batches:    prometheus.NewDesc("switchboard_timer_write_batches_total", "Batches of timer changes read and written together.", nil, nil),
		batched:    prometheus.NewDesc("switchboard_timer_batched_changes_total", "Timer changes that went through a batch.", nil, nil),
	}}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.active, c.partitions, c.members, c.ticks, c.lateness, c.batches, c.batched} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st, sum := c.s.status()
	ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, float64(st.Timers))
	ch <- prometheus.MustNewConstMetric(c.partitions, prometheus.GaugeValue, float64(len(st.Partitions)))
	ch <- prometheus.MustNewConstMetric(c.members, prometheus.GaugeValue, float64(st.Members))
	ch <- prometheus.MustNewConstMetric(c.ticks, prometheus.CounterValue, float64(st.Ticks))
	buckets := make(map[float64]uint64, len(api.TickLatenessBounds))
	var cum uint64
	for i, b := range api.TickLatenessBounds {
		cum += st.TickLateness[i]
		buckets[b.Seconds()] = cum
	}
	ch <- prometheus.MustNewConstHistogram(c.lateness, st.Ticks, sum.Seconds(), buckets)
	b := c.s.store.batch
	ch <- prometheus.MustNewConstMetric(c.batches, prometheus.CounterValue, float64(b.batches.Load()))
	ch <- prometheus.MustNewConstMetric(c.batched, prometheus.CounterValue, float64(b.changes.Load()))
}
