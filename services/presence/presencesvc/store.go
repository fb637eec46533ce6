package presencesvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
)

const (
	// casAttempts bounds the compare-and-set retries of one change.
	casAttempts = 32
	// casBackoff is the largest jittered pause between two attempts.
	casBackoff = 20 * time.Millisecond
)

// userValue is the JSON value of a u.<uid> key.
type userValue struct {
	Conns []api.Conn `json:"conns"`
}

// openBucket creates or updates the presence bucket, with self-expiring
// delete markers where the server has them; the second result is their TTL.
func openBucket(ctx context.Context, js jetstream.JetStream, cfg Config) (jetstream.KeyValue, time.Duration, error) {
	kv, ttl, err := natsx.OpenKV(ctx, js, jetstream.KeyValueConfig{
		Bucket:      cfg.Bucket,
		Description: "Switchboard presence: live connections per user",
		History:     1,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, 0, fmt.Errorf("open bucket %s: %w", cfg.Bucket, err)
	}
	return kv, ttl, nil
}

// isConflict reports whether err is a failed compare-and-set (the key
// changed, or was created, since it was read).
var isConflict = natsx.IsConflict

// kvOperation is the header that marks a KV delete or purge marker.
const kvOperation = "KV-Operation"

// load reads a user's connections and the key's revision (0: no message at
// all). It reads the key's last message from the bucket's stream rather than
// through the KV API so that a delete marker yields its revision too: the
// next write is then a single compare-and-set on that revision instead of a
// failed create followed by a retry.
func (s *Service) load(ctx context.Context, key string) ([]api.Conn, uint64, error) {
	// From the stream's leader: a replica may not show the latest admit yet,
	// and a release that finds nothing writes nothing.
	return s.read(ctx, key, false)
}

// read is load, or with direct a direct get that any replica may answer
// (cheaper; the value may be stale, which a compare-and-set then catches).
func (s *Service) read(ctx context.Context, key string, direct bool) ([]api.Conn, uint64, error) {
	get := natsx.LastMsg
	if direct {
		get = natsx.LastMsgDirect
	}
	m, err := get(ctx, s.nc, "KV_"+s.cfg.Bucket, s.kvPrefix+key)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", key, err)
	}
	if m.Header.Get(kvOperation) != "" || m.Header.Get(jetstream.MarkerReasonHeader) != "" {
		return nil, m.Sequence, nil // removed
	}
	var v userValue
	if err := json.Unmarshal(m.Data, &v); err != nil {
		// Only this service writes the key; a broken value is replaced by
		// the next write instead of blocking the user forever.
		s.log.Error("corrupt presence value, treating as empty", "key", key, "err", err)
		return nil, m.Sequence, nil
	}
	return v.Conns, m.Sequence, nil
}

// store writes conns with a compare-and-set on rev and returns the new
// revision; an empty list removes the key (revision 0).
func (s *Service) store(ctx context.Context, key string, conns []api.Conn, rev uint64) (uint64, error) {
	if len(conns) == 0 {
		if rev == 0 {
			return 0, nil
		}
		return 0, s.remove(ctx, key, jetstream.LastRevision(rev))
	}
	data, err := json.Marshal(userValue{Conns: conns})
	if err != nil {
		return 0, fmt.Errorf("encode %s: %w", key, err)
	}
	if rev == 0 {
		return s.kv.Create(ctx, key, data)
	}
	// rev may be the revision of a delete marker: Update accepts it.
	return s.kv.Update(ctx, key, data, rev)
}

// remove purges key (with a self-expiring marker when the bucket allows).
func (s *Service) remove(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	return s.kv.Purge(ctx, key, natsx.PurgeOpts(s.markerTTL, opts...)...)
}

// changeFunc computes a user's new connection list from the current one. It
// reports whether anything changed; an error aborts the update.
type changeFunc func(conns []api.Conn) (next []api.Conn, changed bool, err error)

// updated is the outcome of update.
type updated struct {
	key     string
	conns   []api.Conn // the list after the update
	rev     uint64     // its revision (0 when the key was removed)
	changed bool       // whether anything was written
}

// update applies change to a user's connections with compare-and-set,
// retrying a bounded number of times on conflict.
func (s *Service) update(ctx context.Context, uid string, change changeFunc) (updated, error) {
	key, err := userKey(uid)
	if err != nil {
		return updated{}, natsx.Errorf(api.CodeBadRequest, "invalid userId")
	}
	for attempt := range casAttempts {
		// On a one-replica bucket the first attempt reads with a direct get
		// (with replicas a follower right after a write answers stale
		// values often enough to cost more than it saves); a decision not
		// to write (nothing to change, a refusal) is taken again on the
		// leader's value, and so is every retry.
		direct := attempt == 0 && s.cfg.Replicas == 1
		conns, rev, err := s.read(ctx, key, direct)
		if err != nil {
			return updated{}, err
		}
		next, changed, err := change(conns)
		if direct && (err != nil || !changed) {
			if conns, rev, err = s.load(ctx, key); err != nil {
				return updated{}, err
			}
			next, changed, err = change(conns)
		}
		if err != nil {
			return updated{}, err
		}
		if !changed {
			return updated{key: key, conns: next, rev: rev}, nil
		}
		nrev, err := s.store(ctx, key, next, rev)
		if err == nil {
			return updated{key: key, conns: next, rev: nrev, changed: true}, nil
		}
		if !isConflict(err) {
			return updated{}, fmt.Errorf("write %s: %w", key, err)
		}
		pause := time.Duration(rand.Int64N(int64(min(casBackoff, time.Duration(attempt+1)*2*time.Millisecond)) + 1))
		select {
		case <-ctx.Done():
			return updated{}, fmt.Errorf("write %s: %w", key, ctx.Err())
		case <-time.After(pause):
		}
	}
	return updated{}, natsx.Errorf(api.CodeUnavailable, "presence busy, retry")
}

func indexOf(conns []api.Conn, socketID string) int {
	for i, c := range conns {
		if c.SocketID == socketID {
			return i
		}
	}
	return -1
}

// Provision creates or updates the bucket as cfg asks, for an operator
// whose NATS user may (the service's own user then only binds to it).
func Provision(ctx context.Context, nc *nats.Conn, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("presence config: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	_, _, err = openBucket(ctx, js, cfg)
	return err
}
