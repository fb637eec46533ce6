package timersvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// record is one timer as stored in KV (times in Unix milliseconds).
type record struct {
	Dur      int   `json:"dur"`
	Start    int64 `json:"start"`
	Deadline int64 `json:"deadline"`
}

func (r record) valid() bool {
	return r.Dur >= api.TimerMinDur && r.Dur <= api.TimerMaxDur && r.Start > 0 && r.Deadline > r.Start
}

// remaining is the whole seconds left at now (rounded up), within [0, dur].
func (r record) remaining(now int64) int {
	left := r.Deadline - now
	if left <= 0 {
		return 0
	}
	return min(int((left+999)/1000), r.Dur)
}

// userDoc is the value of a user's key: the timers by device id.
type userDoc struct {
	Timers map[string]record `json:"timers"`
}

const (
	timerKeyPrefix  = "t."
	leaseKeyPrefix  = "lease."
	memberKeyPrefix = "member."
	metaKey         = "meta"
	// casAttempts bounds the compare-and-set retries of one update.
	casAttempts = 10
)

// userKey is the KV key of a user's timers: t.<partition>.<uid>. KV keys
// cannot hold the "~" that marks an encoded subject token, so "=" (never
// part of a plain id nor of base64url) stands in for it.
func userKey(uid string, partitions int) (string, error) {
	tok, err := subject.KeyToken(uid)
	if err != nil {
		return "", err
	}
	return timerKeyPrefix + strconv.Itoa(PartitionOf(uid, partitions)) + "." + tok, nil
}

// partitionKeys matches the timer keys of one partition (a watch filter).
func partitionKeys(p int) string { return timerKeyPrefix + strconv.Itoa(p) + ".>" }

// leaseKey is the KV key of a partition's lease.
func leaseKey(p int) string { return leaseKeyPrefix + strconv.Itoa(p) }

// uidFromKey reverses userKey.
func uidFromKey(key string) (string, error) {
	rest, ok := strings.CutPrefix(key, timerKeyPrefix)
	if !ok {
		return "", fmt.Errorf("not a timer key: %q", key)
	}
	_, tok, ok := strings.Cut(rest, ".")
	if !ok || tok == "" {
		return "", fmt.Errorf("not a timer key: %q", key)
	}
	return subject.IDFromKeyToken(tok)
}

// metaDoc is the value of the meta key: settings fixed at the bucket's
// creation.
type metaDoc struct {
	Partitions int `json:"partitions"`
}

// openBucket creates or updates the timer bucket (with self-expiring delete
// markers where the server has them; the second result is their TTL) and
// checks that the bucket's partition count is cfg's.
func openBucket(ctx context.Context, js jetstream.JetStream, cfg Config) (jetstream.KeyValue, time.Duration, error) {
	kv, ttl, err := natsx.OpenKV(ctx, js, jetstream.KeyValueConfig{
		Bucket:      cfg.Bucket,
		Description: "Switchboard timers, partition leases and timer instances",
		History:     1,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, 0, fmt.Errorf("open bucket %s: %w", cfg.Bucket, err)
	}
	want, _ := json.Marshal(metaDoc{Partitions: cfg.Partitions})
	if _, err := kv.Create(ctx, metaKey, want); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return nil, 0, fmt.Errorf("write %s: %w", metaKey, err)
	}
	e, err := kv.Get(ctx, metaKey)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", metaKey, err)
	}
	var meta metaDoc
	if err := json.Unmarshal(e.Value(), &meta); err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", metaKey, err)
	}
	if meta.Partitions != cfg.Partitions {
		return nil, 0, fmt.Errorf("bucket %s has %d partitions, partitions is set to %d: every instance must use the bucket's number (a new number needs a new bucket)", cfg.Bucket, meta.Partitions, cfg.Partitions)
	}
	return kv, ttl, nil
}

// errBusy is returned when compare-and-set kept conflicting.
var errBusy = errors.New("too many concurrent updates")

// isConflict reports a failed compare-and-set.
var isConflict = natsx.IsConflict

// store reads and updates users' timers in KV.
type store struct {
	kv         jetstream.KeyValue
	log        *slog.Logger
	partitions int
	markerTTL  time.Duration // 0: plain delete markers
	// last reads a key's last message from the bucket stream's leader
	// (nil: through kv, whose gets any replica may answer). A replica may
	// not show the latest write yet, and a request that finds nothing to
	// change (a stop of a timer just started) writes nothing.
	last func(ctx context.Context, key string) (*jetstream.RawStreamMsg, error)
	// lastDirect reads it with a direct get (any replica).
	lastDirect func(ctx context.Context, key string) (*jetstream.RawStreamMsg, error)
	// batch, where set, takes the first attempt of each change, batched
	// with the changes of other requests.
	batch *batcher
	// written, if set, learns the stored doc and revision of each change
	// written with a new value (not of removals).
	written func(key string, rev uint64, doc *userDoc)
}

// key is the KV key of a user's timers.
func (s *store) key(uid string) (string, error) { return userKey(uid, s.partitions) }

// load returns the user's doc and the revision to write it back at: that
// of its last message, a removal marker included (0 when the key has none).
// Writing after a marker's revision takes one round trip, where creating
// the key anew would take three.
func (s *store) load(ctx context.Context, key string) (userDoc, uint64, error) {
	return s.read(ctx, key, false)
}

// read is load, or with direct (the store must have a direct read) a read
// any replica may answer: cheaper, and possibly stale, which a
// compare-and-set then catches.
func (s *store) read(ctx context.Context, key string, direct bool) (userDoc, uint64, error) {
	last := s.last
	if direct {
		last = s.lastDirect
	}
	if last != nil {
		m, err := last(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			m = nil
		case err != nil:
			return userDoc{}, 0, fmt.Errorf("get %s: %w", key, err)
		}
		doc, rev := docOf(s.log, key, m)
		return doc, rev, nil
	}
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return userDoc{Timers: map[string]record{}}, 0, nil
	}
	if err != nil {
		return userDoc{}, 0, fmt.Errorf("get %s: %w", key, err)
	}
	doc := decodeDoc(s.log, key, e.Value())
	return doc, e.Revision(), nil
}

// docOf is the doc stored in m, the last message of key's subject (nil:
// none), and the revision to write it back at.
func docOf(log *slog.Logger, key string, m *jetstream.RawStreamMsg) (userDoc, uint64) {
	switch {
	case m == nil:
		return userDoc{Timers: map[string]record{}}, 0
	case m.Header.Get("KV-Operation") != "" || m.Header.Get(jetstream.MarkerReasonHeader) != "":
		// Removed: no timers, written after the marker.
		return userDoc{Timers: map[string]record{}}, m.Sequence
	}
	return decodeDoc(log, key, m.Data), m.Sequence
}

// decodeDoc parses a user's doc; a corrupt value counts as no timers (and
// is overwritten by the next update).
func decodeDoc(log *slog.Logger, key string, data []byte) userDoc {
	var doc userDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		log.Warn("corrupt timer record", "key", key, "err", err)
		doc = userDoc{}
	}
	if doc.Timers == nil {
		doc.Timers = map[string]record{}
	}
	return doc
}

// save writes doc at rev (create when rev is 0, delete when doc is empty).
// Callers only save docs they changed: an empty one had timers.
func (s *store) save(ctx context.Context, key string, doc userDoc, rev uint64) error {
	if len(doc.Timers) == 0 {
		if rev == 0 {
			return nil
		}
		return s.kv.Purge(ctx, key, natsx.PurgeOpts(s.markerTTL, jetstream.LastRevision(rev))...)
	}
	data, err := json.Marshal(doc)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	if rev == 0 {
		rev, err = s.kv.Create(ctx, key, data)
	} else {
		rev, err = s.kv.Update(ctx, key, data, rev)
	}
	if err == nil && s.written != nil {
		s.written(key, rev, &doc)
	}
	return err
}

// mutate applies fn to the user's doc with compare-and-set, retrying on
// conflicts. fn reports whether it changed the doc (nothing is written
// otherwise) and may refuse with an error, which mutate returns as is.
func (s *store) mutate(ctx context.Context, key string, fn func(doc *userDoc, now int64) (bool, error)) error {
	readDirect := s.lastDirect != nil
	if s.batch != nil {
		switch r := s.batch.do(ctx, key, fn); r.outcome {
		case written:
			return nil
		case unknown:
			return r.err
		}
		readDirect = false // the batch read directly already
	}
	for attempt := range casAttempts {
		// The first attempt reads directly where the store can (a
		// one-replica bucket); a decision not to write (nothing to change,
		// a refusal) is taken again on the leader's value, and so is every
		// retry.
		direct := attempt == 0 && readDirect
		doc, rev, err := s.read(ctx, key, direct)
		if err != nil {
			return err
		}
		changed, err := fn(&doc, time.Now().UnixMilli())
		if direct && (err != nil || !changed) {
			if doc, rev, err = s.load(ctx, key); err != nil {
				return err
			}
			changed, err = fn(&doc, time.Now().UnixMilli())
		}
		if err != nil || !changed {
			return err
		}
		err = s.save(ctx, key, doc, rev)
		if !isConflict(err) {
			if err != nil {
				return fmt.Errorf("write %s: %w", key, err)
			}
			return nil
		}
		// Another writer won; back off a little so retries spread out.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(rand.IntN(5*(attempt+1))) * time.Millisecond):
		}
	}
	return fmt.Errorf("write %s: %w", key, errBusy)
}

// list returns the user's running timers at now, ordered by device id.
func list(doc userDoc, now int64) []api.TimerInfo {
	out := make([]api.TimerInfo, 0, len(doc.Timers))
	for dev, r := range doc.Timers {
		if !r.valid() || r.Deadline <= now {
			continue
		}
		out = append(out, api.TimerInfo{
			DeviceID:  dev,
			Dur:       r.Dur,
			Remaining: r.remaining(now),
			Deadline:  time.UnixMilli(r.Deadline).UTC(),
		})
	}
	slices.SortFunc(out, func(a, b api.TimerInfo) int { return strings.Compare(a.DeviceID, b.DeviceID) })
	return out
}

// Provision creates or updates the bucket and the events stream as cfg
// asks, for an operator whose NATS user may (the service's own user then
// only binds to them).
func Provision(ctx context.Context, nc *nats.Conn, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("timer config: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	if _, _, err := openBucket(ctx, js, cfg); err != nil {
		return err
	}
	_, err = openStream(ctx, js, cfg)
	return err
}
