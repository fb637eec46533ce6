package natsx

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MarkerTTL is how long the marker of a key removed with PurgeOpts stays in
// a bucket opened by OpenKV; afterwards the key leaves no trace.
const MarkerTTL = time.Minute

// OpenKV opens a bucket, asking for delete marker TTLs (so removed keys
// vanish) and falling back to plain markers on servers that lack them. The
// second result is the marker TTL in use (0: plain markers).
//
// A bucket that exists with the history, replicas and marker TTL asked for
// is bound as it is: that needs only the right to read its stream's info,
// so a service whose NATS user may not create or change streams works on a
// bucket provisioned for it. Otherwise the bucket is created or updated.
func OpenKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (kv jetstream.KeyValue, ttl time.Duration, err error) {
	err = Retry(ctx, openPatience, func(ctx context.Context) error {
		kv, ttl, err = openKV(ctx, js, cfg)
		return err
	})
	return kv, ttl, err
}

// openPatience is how long opening a bucket or stream keeps trying while
// JetStream does not answer (a cluster electing its leaders, a server
// coming up).
const openPatience = 30 * time.Second

// Retry calls fn until it succeeds, fails for good, ctx ends or patience
// runs out, waiting longer between attempts (100 ms doubling to 2 s). An
// error is worth retrying when JetStream or a responder did not answer in
// time; each attempt gets at most 5 s.
func Retry(ctx context.Context, patience time.Duration, fn func(context.Context) error) error {
	deadline := time.Now().Add(patience)
	wait := 100 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := fn(actx)
		cancel()
		if err == nil || !Transient(err) || ctx.Err() != nil || time.Now().Add(wait).After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// Transient reports errors that a later attempt may not see: timeouts, no
// responders, JetStream briefly without a leader or quorum.
func Transient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 503
}

func openKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, time.Duration, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	switch {
	case err == nil:
		if ttl, ok := kvMatches(ctx, js, cfg); ok {
			return kv, ttl, nil
		}
	case !errors.Is(err, jetstream.ErrBucketNotFound):
		return nil, 0, err
	}
	cfg.LimitMarkerTTL = MarkerTTL
	kv, err = js.CreateOrUpdateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported) {
		cfg.LimitMarkerTTL = 0
		kv, err = js.CreateOrUpdateKeyValue(ctx, cfg)
	}
	if err != nil {
		return nil, 0, err
	}
	return kv, cfg.LimitMarkerTTL, nil
}

// kvMatches reports whether the existing bucket has cfg's history and
// replicas and marker TTLs, and returns the marker TTL.
func kvMatches(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (time.Duration, bool) {
	st, err := js.Stream(ctx, "KV_"+cfg.Bucket)
	if err != nil {
		return 0, false
	}
	c := st.CachedInfo().Config
	history := max(cfg.History, 1)
	replicas := max(cfg.Replicas, 1)
	ok := c.MaxMsgsPerSubject == int64(history) && c.Replicas == replicas && c.SubjectDeleteMarkerTTL == MarkerTTL
	return c.SubjectDeleteMarkerTTL, ok
}

// PurgeOpts are the options of a purge that leaves a marker of markerTTL
// (as returned by OpenKV), plus opts.
func PurgeOpts(markerTTL time.Duration, opts ...jetstream.KVDeleteOpt) []jetstream.KVDeleteOpt {
	if markerTTL > 0 {
		opts = append(opts, jetstream.PurgeTTL(markerTTL))
	}
	return opts
}

// IsConflict reports a failed compare-and-set: a create of an existing key,
// or an update or delete with a stale revision.
func IsConflict(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
