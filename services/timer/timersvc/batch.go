package timersvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/natsx"
)

// batcher pipelines the changes of concurrent requests (a burst of
// timerStart): one goroutine reads the keys of every waiting change with
// one direct get, applies the changes and publishes their writes, and goes
// on with the next batch while the acknowledgements of the last come back.
// Any replica may answer the read; a stale value fails the write's
// compare-and-set. What it cannot settle goes back to the caller, which
// takes the one-by-one path of store.mutate on the leader's value: a
// decision to write nothing, a conflict.
type batcher struct {
	log       *slog.Logger
	js        jetstream.JetStream
	prefix    string        // subject prefix of the bucket's keys: $KV.<bucket>.
	markerTTL time.Duration // 0: plain delete markers
	// read returns the last message of each subject (absent: none).
	read func(ctx context.Context, subjs []string) (map[string]*jetstream.RawStreamMsg, error)
	// written, if set, learns each write acknowledged (doc nil: removed).
	written func(key string, rev uint64, doc *userDoc)
	jobs    chan *batchJob
	quit    chan struct{} // closed when run returns

	// Since start: batches read, and the changes they carried; rounds of
	// run's loop.
	batches, changes, rounds atomic.Uint64
	// off is set when the server answered a batched read with a status
	// (one that does not know multi-key direct gets): every change then
	// goes one by one.
	off atomic.Bool

	mu    sync.Mutex
	busy  map[string]bool // keys with a write not yet acknowledged
	freed chan struct{}   // a busy key was freed
	acks  sync.WaitGroup  // acknowledgement waits
}

// outcome is what became of a change given to the batcher.
type outcome int

const (
	written  outcome = iota // stored (or nothing needed storing)
	notTaken                // nothing written: take the one-by-one path
	unknown                 // the write's fate is unknown: report the error
)

type batchJob struct {
	key  string
	fn   func(doc *userDoc, now int64) (bool, error)
	done chan batchResult // buffered: the batcher never waits on a caller
}

type batchResult struct {
	outcome outcome
	err     error // with unknown
}

func newBatcher(log *slog.Logger, js jetstream.JetStream, nc *nats.Conn, bucket string, markerTTL time.Duration) *batcher {
	return &batcher{
		log:       log,
		js:        js,
		prefix:    "$KV." + bucket + ".",
		markerTTL: markerTTL,
		read: func(ctx context.Context, subjs []string) (map[string]*jetstream.RawStreamMsg, error) {
			if len(subjs) == 1 {
				// One key: the plain direct get, on the connection's shared
				// reply subscription.
				m, err := natsx.LastMsgDirect(ctx, nc, "KV_"+bucket, subjs[0])
				switch {
				case err == nil:
					return map[string]*jetstream.RawStreamMsg{subjs[0]: m}, nil
				case errors.Is(err, jetstream.ErrMsgNotFound):
					return nil, nil
				}
				return nil, err
			}
			return natsx.LastMsgsDirect(ctx, nc, "KV_"+bucket, subjs)
		},
		jobs:  make(chan *batchJob),
		quit:  make(chan struct{}),
		busy:  map[string]bool{},
		freed: make(chan struct{}, 1),
	}
}

// do hands fn's change of key to the batch; ctx bounds the wait for a
// place in it. Once the batcher took the change, do waits for its outcome,
// which comes within about opTimeout: the caller must not apply fn again to
// a change whose write may land.
func (b *batcher) do(ctx context.Context, key string, fn func(doc *userDoc, now int64) (bool, error)) batchResult {
	if b.off.Load() {
		return batchResult{outcome: notTaken}
	}
	j := &batchJob{key: key, fn: fn, done: make(chan batchResult, 1)}
	select {
	case b.jobs <- j:
	case <-ctx.Done():
		return batchResult{outcome: notTaken}
	case <-b.quit:
		return batchResult{outcome: notTaken}
	}
	return <-j.done
}

// run serves batches until ctx ends. Each batch takes every change waiting
// (up to natsx.MaxDirectBatch, one per key, none of a key whose last write
// is not acknowledged yet); the changes arriving meanwhile make the next.
func (b *batcher) run(ctx context.Context) {
	var later []*batchJob // changes of a key busy or already in the batch
	defer func() {
		for _, j := range later {
			j.done <- batchResult{outcome: notTaken}
		}
		close(b.quit)
		b.acks.Wait()
	}()
	for {
		b.rounds.Add(1)
		batch := later
		later = nil
		select {
		case <-ctx.Done():
			later = batch
			return
		case j := <-b.jobs:
			batch = append(batch, j)
		case <-b.freed:
		}
	collect:
		for len(batch) < 2*natsx.MaxDirectBatch {
			select {
			case j := <-b.jobs:
				batch = append(batch, j)
			default:
				break collect
			}
		}
		jobs := make([]*batchJob, 0, min(len(batch), natsx.MaxDirectBatch))
		full := false // changes left over for want of room, not of their key
		b.mu.Lock()
		for _, j := range batch {
			switch {
			case b.busy[j.key]:
				later = append(later, j) // freeing the key wakes the loop
			case len(jobs) == natsx.MaxDirectBatch:
				later = append(later, j)
				full = true
			default:
				b.busy[j.key] = true
				jobs = append(jobs, j)
			}
		}
		b.mu.Unlock()
		if len(jobs) > 0 {
			if pending := b.send(jobs); len(pending) > 0 {
				b.acks.Add(1)
				go func() { defer b.acks.Done(); b.await(pending) }()
			}
		}
		if full {
			b.poke() // the next batch takes them at once
		}
	}
}

// poke wakes run.
func (b *batcher) poke() {
	select {
	case b.freed <- struct{}{}:
	default:
	}
}

// release frees keys for the next batches.
func (b *batcher) release(keys ...string) {
	b.mu.Lock()
	for _, k := range keys {
		delete(b.busy, k)
	}
	b.mu.Unlock()
	b.poke()
}

// pendingWrite is a change published and not yet acknowledged.
type pendingWrite struct {
	job *batchJob
	doc *userDoc // nil: a removal
	ack jetstream.PubAckFuture
}

// send reads and changes jobs (distinct keys, marked busy) and publishes
// their writes. It answers the jobs settled without a write and returns
// the others.
func (b *batcher) send(jobs []*batchJob) []pendingWrite {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	subjs := make([]string, len(jobs))
	for i, j := range jobs {
		subjs[i] = b.prefix + j.key
	}
	msgs, err := b.read(ctx, subjs)
	var status *natsx.StatusError
	if errors.As(err, &status) && !b.off.Swap(true) {
		b.log.Warn("the server does not answer batched reads; timer changes go one by one", "err", err)
	}
	if err != nil {
		b.log.Debug("batched read failed, changes go one by one", "changes", len(jobs), "err", err)
		for _, j := range jobs {
			b.answer(j, batchResult{outcome: notTaken})
		}
		return nil
	}
	b.batches.Add(1)
	b.changes.Add(uint64(len(jobs)))
	now := time.Now().UnixMilli()
	pending := make([]pendingWrite, 0, len(jobs))
	for i, j := range jobs {
		doc, rev := docOf(b.log, j.key, msgs[subjs[i]])
		changed, err := j.fn(&doc, now)
		if err != nil || !changed {
			b.answer(j, batchResult{outcome: notTaken}) // decided again on the leader's value
			continue
		}
		m, err := b.writeMsg(subjs[i], doc, rev)
		switch {
		case err != nil:
			b.answer(j, batchResult{outcome: unknown, err: err})
			continue
		case m == nil:
			b.answer(j, batchResult{outcome: written})
			continue
		}
		ack, err := b.js.PublishMsgAsync(m)
		if err != nil {
			b.answer(j, batchResult{outcome: notTaken}) // not sent
			continue
		}
		w := pendingWrite{job: j, ack: ack}
		if len(doc.Timers) > 0 {
			w.doc = &doc
		}
		pending = append(pending, w)
	}
	return pending
}

// await answers published writes as their acknowledgements come (within
// opTimeout: then the write's fate is unknown).
func (b *batcher) await(pending []pendingWrite) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	for _, p := range pending {
		select {
		case ack := <-p.ack.Ok():
			if b.written != nil {
				b.written(p.job.key, ack.Sequence, p.doc)
			}
			b.answer(p.job, batchResult{outcome: written})
		case err := <-p.ack.Err():
			if isConflict(err) {
				b.answer(p.job, batchResult{outcome: notTaken})
				continue
			}
			b.answer(p.job, batchResult{outcome: unknown, err: fmt.Errorf("write %s: %w", p.job.key, err)})
		case <-ctx.Done():
			b.answer(p.job, batchResult{outcome: unknown, err: fmt.Errorf("write %s: no acknowledgement within %s", p.job.key, opTimeout)})
		}
	}
}

// answer frees j's key and gives j its outcome.
func (b *batcher) answer(j *batchJob, r batchResult) {
	b.release(j.key)
	j.done <- r
}

// writeMsg is the compare-and-set write of doc at rev as store.save makes
// it (nil: nothing to write).
func (b *batcher) writeMsg(subj string, doc userDoc, rev uint64) (*nats.Msg, error) {
	m := nats.NewMsg(subj)
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(rev, 10))
	if len(doc.Timers) == 0 {
		if rev == 0 {
			return nil, nil
		}
		m.Header.Set("KV-Operation", "PURGE")
		m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		if b.markerTTL > 0 {
			m.Header.Set(jetstream.MsgTTLHeader, b.markerTTL.String())
		}
		return m, nil
	}
	data, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", subj, err)
	}
	m.Data = data
	return m, nil
}
