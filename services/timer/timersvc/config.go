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
	// Bucket is the JetStream KV bucket holding timers and the tick lease.
	Bucket string `koanf:"bucket"`
	// Replicas is the bucket's replication factor.
	Replicas int `koanf:"replicas"`
	// LeaseTTL is how long the tick lease lasts without renewal; the holder
	// renews it every LeaseTTL/4 and the other instances try to take it as
	// often.
	LeaseTTL time.Duration `koanf:"lease_ttl"`
	// Instance names this instance in the lease ("" picks a random name).
	Instance string `koanf:"instance"`
}

// DefaultConfig returns the default settings.
func DefaultConfig() Config {
	return Config{
		MaxTimersPerUser: 10,
		Bucket:           "sb_timers",
		Replicas:         1,
		LeaseTTL:         5 * time.Second,
	}
}

var bucketRe = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// MinLeaseTTL is the shortest accepted lease_ttl.
const MinLeaseTTL = 400 * time.Millisecond

func (c Config) validate() error {
	var errs []error
	if c.MaxTimersPerUser < 1 {
		errs = append(errs, fmt.Errorf("max_timers_per_user must be at least 1, got %d", c.MaxTimersPerUser))
	}
	if !bucketRe.MatchString(c.Bucket) {
		errs = append(errs, fmt.Errorf("bucket %q: want [A-Za-z0-9_-]+", c.Bucket))
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("replicas must be 1..5, got %d", c.Replicas))
	}
	if c.LeaseTTL < MinLeaseTTL {
		errs = append(errs, fmt.Errorf("lease_ttl must be at least %s, got %s", MinLeaseTTL, c.LeaseTTL))
	}
	if len(c.Instance) > 128 {
		errs = append(errs, errors.New("instance: at most 128 characters"))
	}
	return errors.Join(errs...)
}
