package timersvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
)

// batchEnv is a batcher on its own bucket, served until the test ends.
type batchEnv struct {
	b  *batcher
	kv jetstream.KeyValue
}

// newBatchEnv runs a batcher whose reads go through read (nil: the
// bucket's real direct reads).
func newBatchEnv(t *testing.T, read func(ctx context.Context, subjs []string) (map[string]*jetstream.RawStreamMsg, error)) *batchEnv {
	t.Helper()
	e := newEnv(t)
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// As the service opens its bucket: removals leave markers with a TTL.
	kv, markerTTL, err := natsx.OpenKV(ctx, js, jetstream.KeyValueConfig{Bucket: "batch", History: 1})
	if err != nil {
		t.Fatal(err)
	}
	if markerTTL == 0 {
		t.Fatal("the server keeps no marker TTL")
	}
	b := newBatcher(testLog(t), js, e.nc, "batch", markerTTL)
	if read != nil {
		b.read = read
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })
	return &batchEnv{b: b, kv: kv}
}

func (e *batchEnv) put(t *testing.T, key string, doc userDoc) uint64 {
	t.Helper()
	data, _ := json.Marshal(doc)
	rev, err := e.kv.Put(context.Background(), key, data)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

func (e *batchEnv) get(t *testing.T, key string) (userDoc, bool) {
	t.Helper()
	entry, err := e.kv.Get(context.Background(), key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return userDoc{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	var doc userDoc
	if err := json.Unmarshal(entry.Value(), &doc); err != nil {
		t.Fatal(err)
	}
	return doc, true
}

func oneTimer(dev string) userDoc {
	return userDoc{Timers: map[string]record{dev: {Dur: 60, Start: 1, Deadline: 60_001}}}
}

// addTimer is a change that adds dev's timer.
func addTimer(dev string) func(*userDoc, int64) (bool, error) {
	return func(doc *userDoc, now int64) (bool, error) {
		doc.Timers[dev] = record{Dur: 60, Start: now, Deadline: now + 60_000}
		return true, nil
	}
}

// Each change given to the batcher is written, or handed back untouched
// for the one-by-one path, or reported: never written twice, never lost.
func TestBatcherOutcomes(t *testing.T) {
	t.Parallel()
	e := newBatchEnv(t, nil)
	e.put(t, "t.0.existing", oneTimer("phone"))
	e.put(t, "t.0.emptied", oneTimer("phone"))
	refused := errors.New("refused")
	for _, tc := range []struct {
		name    string
		key     string
		fn      func(*userDoc, int64) (bool, error)
		want    outcome
		devices []string // in KV afterwards; nil: no value
	}{
		{"new key", "t.0.new", addTimer("phone"), written, []string{"phone"}},
		{"existing key", "t.0.existing", addTimer("tablet"), written, []string{"phone", "tablet"}},
		{"nothing to change", "t.0.unchanged", func(*userDoc, int64) (bool, error) { return false, nil }, notTaken, nil},
		{"refusal", "t.0.refused", func(*userDoc, int64) (bool, error) { return false, refused }, notTaken, nil},
		{"last timer removed", "t.0.emptied", func(doc *userDoc, _ int64) (bool, error) {
			delete(doc.Timers, "phone")
			return true, nil
		}, written, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.b.do(context.Background(), tc.key, tc.fn)
			if r.outcome != tc.want || r.err != nil {
				t.Fatalf("outcome %v (%v), want %v", r.outcome, r.err, tc.want)
			}
			doc, ok := e.get(t, tc.key)
			if !ok != (tc.devices == nil) || len(doc.Timers) != len(tc.devices) {
				t.Fatalf("stored %+v (present %v), want devices %v", doc, ok, tc.devices)
			}
			for _, dev := range tc.devices {
				if _, ok := doc.Timers[dev]; !ok {
					t.Fatalf("stored %+v, want devices %v", doc, tc.devices)
				}
			}
		})
	}
}

// A change decided on a stale read fails its compare-and-set and comes back
// untouched: the value written meanwhile stays.
func TestBatcherStaleReadNotTaken(t *testing.T) {
	t.Parallel()
	stale := func(context.Context, []string) (map[string]*jetstream.RawStreamMsg, error) {
		return nil, nil // as if no key had a value yet
	}
	e := newBatchEnv(t, stale)
	e.put(t, "t.0.alice", oneTimer("phone"))
	if r := e.b.do(context.Background(), "t.0.alice", addTimer("tablet")); r.outcome != notTaken {
		t.Fatalf("outcome %v (%v), want notTaken", r.outcome, r.err)
	}
	doc, _ := e.get(t, "t.0.alice")
	if _, ok := doc.Timers["phone"]; !ok || len(doc.Timers) != 1 {
		t.Fatalf("stored %+v, want the phone's timer only", doc)
	}
}

// Concurrent changes share batches, and changes of one key wait for the
// key's earlier write instead of conflicting with it.
func TestBatcherConcurrent(t *testing.T) {
	t.Parallel()
	e := newBatchEnv(t, nil)
	const users, devices = 100, 5
	var wg sync.WaitGroup
	results := make(chan batchResult, users*devices)
	for u := range users {
		for d := range devices {
			wg.Go(func() {
				results <- e.b.do(context.Background(), fmt.Sprintf("t.0.u%d", u), addTimer(fmt.Sprintf("d%d", d)))
			})
		}
	}
	wg.Wait()
	close(results)
	for r := range results {
		if r.outcome != written {
			t.Fatalf("outcome %v (%v), want written", r.outcome, r.err)
		}
	}
	for u := range users {
		if doc, _ := e.get(t, fmt.Sprintf("t.0.u%d", u)); len(doc.Timers) != devices {
			t.Fatalf("user %d: %d timers, want %d", u, len(doc.Timers), devices)
		}
	}
	if n := e.b.changes.Load(); n != users*devices {
		t.Fatalf("%d changes batched, want %d", n, users*devices)
	}
	if n := e.b.batches.Load(); n >= users*devices/2 {
		t.Fatalf("%d batches for %d concurrent changes: not batched", n, users*devices)
	}
	t.Logf("%d changes in %d batches", users*devices, e.b.batches.Load())
}

// A burst of timerStart from many users is stored in batches and every
// timer ticks: the service's path through the batcher, end to end.
func TestStartBurstBatched(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	svc := e.startLeader(t, testConfig())
	ticks := make(chan string, 1024)
	sub, err := e.nc.Subscribe("sb.out.device.>", func(m *nats.Msg) {
		if m.Header.Get(api.HeaderEvent) == api.EventTick {
			ticks <- m.Subject
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	const n = 300
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			reply, err := e.nc.RequestMsgWithContext(ctx, e.eventMsg(t, api.EventTimerStart, who{fmt.Sprintf("user%d", i), "phone", "s"}, `[{"dur":30}]`))
			if err == nil {
				if se := natsx.ErrorFromMsg(reply); se != nil {
					err = se
				}
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("timerStart: %v", err)
		}
	}
	seen := map[string]bool{}
	for deadline := time.After(5 * time.Second); len(seen) < n; {
		select {
		case subj := <-ticks:
			seen[subj] = true
		case <-deadline:
			t.Fatalf("first ticks of %d of %d timers", len(seen), n)
		}
	}
	b := svc.store.batch
	if got := b.changes.Load(); got < n {
		t.Fatalf("%d changes batched, want at least %d", got, n)
	}
	if got := b.batches.Load(); got >= n/2 {
		t.Fatalf("%d batches for %d concurrent starts: not batched", got, n)
	}
}

// A change this instance wrote ticks at once where it drives the
// partition, and not where it does not.
func TestWrittenAppliesAtOnce(t *testing.T) {
	t.Parallel()
	pub := &capture{}
	tk := newTicker(testLog(t), pub, 2, 0, func(edge) {})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tk.sched.Run(ctx)
	driven := "alice"
	p := PartitionOf(driven, 2)
	other := "bob"
	for PartitionOf(other, 2) == p {
		other += "b"
	}
	gen := tk.activate(p, 0, time.Now().Add(time.Hour))
	now := time.Now()
	doc := userDoc{Timers: map[string]record{"phone": {Dur: 60, Start: now.UnixMilli(), Deadline: now.UnixMilli() + 60_000}}}
	tk.written(other, 7, &doc, now)
	tk.written(driven, 7, &doc, now)
	waitFor(t, time.Second, "first tick", func() bool { return pub.count() == 1 })
	if _, ok := tk.current(driven, "phone"); !ok {
		t.Fatal("the written timer is not running")
	}
	if _, ok := tk.current(other, "phone"); ok {
		t.Fatal("a timer of a partition not driven here runs")
	}
	// The watch's delivery of the same revision changes nothing.
	tk.apply(p, gen, driven, 7, &doc, time.Now())
	time.Sleep(100 * time.Millisecond)
	if n := pub.count(); n != 1 {
		t.Fatalf("%d ticks, want 1", n)
	}
}

// A server that answers batched reads with a status (one without
// multi-key direct gets) turns batching off: the change comes back
// untouched, and later changes go one by one without asking again.
func TestBatcherOffWhenUnsupported(t *testing.T) {
	t.Parallel()
	var reads atomic.Int32
	unsupported := func(context.Context, []string) (map[string]*jetstream.RawStreamMsg, error) {
		reads.Add(1)
		return nil, fmt.Errorf("get last messages: %w", &natsx.StatusError{Status: "408", Description: "Empty Request"})
	}
	e := newBatchEnv(t, unsupported)
	for range 3 {
		if r := e.b.do(context.Background(), "t.0.alice", addTimer("phone")); r.outcome != notTaken {
			t.Fatalf("outcome %v (%v), want notTaken", r.outcome, r.err)
		}
	}
	if n := reads.Load(); n != 1 {
		t.Fatalf("%d batched reads, want 1", n)
	}
	if _, ok := e.get(t, "t.0.alice"); ok {
		t.Fatal("a change was written")
	}
}

// Changes of one key wait for each other's acknowledgement without the
// batcher spinning meanwhile: it wakes when a key is freed or a change
// arrives, a few times per change.
func TestBatcherWaitsWithoutSpinning(t *testing.T) {
	t.Parallel()
	e := newBatchEnv(t, nil)
	const changes = 50
	var wg sync.WaitGroup
	for d := range changes {
		wg.Go(func() {
			if r := e.b.do(context.Background(), "t.0.one", addTimer(fmt.Sprintf("d%d", d))); r.outcome != written {
				t.Errorf("outcome %v (%v), want written", r.outcome, r.err)
			}
		})
	}
	wg.Wait()
	if doc, _ := e.get(t, "t.0.one"); len(doc.Timers) != changes {
		t.Fatalf("%d timers, want %d", len(doc.Timers), changes)
	}
	if n := e.b.rounds.Load(); n > 4*changes {
		t.Fatalf("%d rounds of the batcher for %d changes of one key", n, changes)
	}
	t.Logf("%d rounds for %d changes", e.b.rounds.Load(), changes)
}
