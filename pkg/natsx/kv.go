package natsx

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// MarkerTTL is how long the marker of a key removed with PurgeOpts stays in
// a bucket opened by OpenKV; afterwards the key leaves no trace.
const MarkerTTL = time.Minute

// OpenKV creates or updates a bucket, asking for delete marker TTLs (so
// removed keys vanish) and falling back to plain markers on servers that
// lack them. The second result is the marker TTL in use (0: plain markers).
func OpenKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, time.Duration, error) {
	cfg.LimitMarkerTTL = MarkerTTL
	kv, err := js.CreateOrUpdateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported) {
		cfg.LimitMarkerTTL = 0
		kv, err = js.CreateOrUpdateKeyValue(ctx, cfg)
	}
	if err != nil {
		return nil, 0, err
	}
	return kv, cfg.LimitMarkerTTL, nil
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
