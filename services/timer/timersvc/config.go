package timersvc

import (
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Config configures the timer service (section `timer`).
type Config struct {
	// MaxTimersPerUser caps the running timers of one user across devices.
	MaxTimersPerUser int `koanf:"max_timers_per_user"`
	// Bucket is the JetStream KV bucket holding timers, leases and members.
	Bucket string `koanf:"bucket"`
	// Replicas is the replication factor of the bucket and of the events
	// stream.
	Replicas int `koanf:"replicas"`
	// Partitions is the number of partitions timers are spread over (by
	// user). It is fixed when the bucket is created: every instance must use
	// the same value.
	Partitions int `koanf:"partitions"`
	// LeaseTTL is how long a partition lease lasts without renewal: another
	// instance takes a partition over after seeing its lease unchanged for
	// this long.
	LeaseTTL time.Duration `koanf:"lease_ttl"`
	// LeaseRenew is how often a holder renews its leases (and its
	// membership). A holder stops ticking a partition LeaseTTL-LeaseRenew
	// after sending its last successful renewal.
	LeaseRenew time.Duration `koanf:"lease_renew"`
	// Instance names this instance in logs and status ("" picks a random
	// name). Leases are held by a random per-process identity, so two
	// instances with one name never share a lease.
	Instance string `koanf:"instance"`
	// EventsStream is the JetStream stream of timer edges and of the events
	// for backend services.
	EventsStream string `koanf:"events_stream"`
	// EventsMaxAge and EventsMaxBytes bound what the events stream keeps.
	EventsMaxAge   time.Duration `koanf:"events_max_age"`
	EventsMaxBytes int64         `koanf:"events_max_bytes"`
	// DedupWindow is the stream's duplicate window: a repeated edge within
	// it is dropped by the server.
	DedupWindow time.Duration `koanf:"dedup_window"`
	// TickBatch groups ticks: the scheduler wakes on multiples of it and
	// sends every tick due by then in one write, so a tick is at most this
	// late (plus sending) and many ticks cost one wake-up. 0 sends each tick
	// at its due time.
	TickBatch time.Duration `koanf:"tick_batch"`
}

// DefaultConfig returns the default settings.
func DefaultConfig() Config {
	return Config{
		MaxTimersPerUser: 10,
		Bucket:           "sb_timers",
		Replicas:         1,
		Partitions:       64,
		LeaseTTL:         1500 * time.Millisecond,
		LeaseRenew:       300 * time.Millisecond,
		EventsStream:     "sb_timer_events",
		EventsMaxAge:     24 * time.Hour,
		EventsMaxBytes:   1 << 30,
		DedupWindow:      2 * time.Minute,
		TickBatch:        5 * time.Millisecond,
	}
}

var nameRe = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// Bounds of the settings.
const (
	MinLeaseRenew = 50 * time.Millisecond
	MaxPartitions = 1024
	MaxTickBatch  = 100 * time.Millisecond
)

func (c Config) validate() error {
	var errs []error
	if c.MaxTimersPerUser < 1 {
		errs = append(errs, fmt.Errorf("max_timers_per_user must be at least 1, got %d", c.MaxTimersPerUser))
	}
	if !nameRe.MatchString(c.Bucket) {
		errs = append(errs, fmt.Errorf("bucket %q: want [A-Za-z0-9_-]+", c.Bucket))
	}
	if !nameRe.MatchString(c.EventsStream) {
		errs = append(errs, fmt.Errorf("events_stream %q: want [A-Za-z0-9_-]+", c.EventsStream))
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("replicas must be 1..5, got %d", c.Replicas))
	}
	if c.Partitions < 1 || c.Partitions > MaxPartitions {
		errs = append(errs, fmt.Errorf("partitions must be 1..%d, got %d", MaxPartitions, c.Partitions))
	}
	if c.LeaseRenew < MinLeaseRenew {
		errs = append(errs, fmt.Errorf("lease_renew must be at least %s, got %s", MinLeaseRenew, c.LeaseRenew))
	}
	if c.LeaseTTL < 3*c.LeaseRenew {
		errs = append(errs, fmt.Errorf("lease_ttl must be at least 3 × lease_renew (%s), got %s", 3*c.LeaseRenew, c.LeaseTTL))
	}
	if len(c.Instance) > 128 {
		errs = append(errs, errors.New("instance: at most 128 characters"))
	}
	if c.EventsMaxAge < time.Minute {
		errs = append(errs, fmt.Errorf("events_max_age must be at least 1m, got %s", c.EventsMaxAge))
	}
	if c.EventsMaxBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("events_max_bytes must be at least 1 MiB, got %d", c.EventsMaxBytes))
	}
	if c.DedupWindow < 10*time.Second || c.DedupWindow > c.EventsMaxAge {
		errs = append(errs, fmt.Errorf("dedup_window must be 10s..events_max_age, got %s", c.DedupWindow))
	}
	if c.TickBatch < 0 || c.TickBatch > MaxTickBatch {
		errs = append(errs, fmt.Errorf("tick_batch must be 0..%s, got %s", MaxTickBatch, c.TickBatch))
	}
	return errors.Join(errs...)
}

// holdFor is how long a successful renewal (counted from its sending) lets
// the holder tick: it stops one renewal period before any other instance
// can take the lease.
func (c Config) holdFor() time.Duration { return c.LeaseTTL - c.LeaseRenew }
