// Package timersvc is Switchboard's timer service: per-device countdown
// timers that clients start with `timerStart`, stored in JetStream KV and
// ticked once per second by the one instance holding the tick lease.
package timersvc

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/client"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

const (
	// QueueGroup serves client events: any instance may take any event.
	QueueGroup = "timer"
	// ServiceName is the micro service name (`nats micro ls`).
	ServiceName = "switchboard-timer"
	// Version is the micro service version.
	Version = "1.0.0"

	// opTimeout bounds the storage work of one request, retries included.
	opTimeout = 3 * time.Second
	// maxInFlight bounds the client events handled at once per instance.
	maxInFlight = 1024
	// flushTimeout bounds each wait of Stop (draining, pending removals).
	flushTimeout = 2 * time.Second
)

// Service is a running timer service instance.
type Service struct {
	log      *slog.Logger
	nc       *nats.Conn
	cfg      Config
	instance string
	holder   string
	js       jetstream.JetStream
	kv       jetstream.KeyValue
	store    *store
	ticker   *ticker
	edges    *edger
	coord    *coordinator
	notify   *client.Client

	subs  []*nats.Subscription
	micro micro.Service

	// Client-event handlers in flight.
	sem     chan struct{}
	hmu     sync.Mutex
	closing bool
	hwg     sync.WaitGroup

	// Finished timers waiting to be removed from KV; unfinished counts the
	// edges and removals not done yet.
	removals   *retryQueue[removal]
	unfinished atomic.Int64

	runCtx    context.Context
	stopLease chan struct{}
	leaseWG   sync.WaitGroup
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	stopOnce  sync.Once
	stopErr   error
}

var _ partitionDriver = (*Service)(nil)

// directReader is the store's direct read on a one-replica bucket (nil
// with replicas: a follower right after a write answers stale values often
// enough to cost more than it saves).
func directReader(nc *nats.Conn, cfg Config) func(context.Context, string) (*jetstream.RawStreamMsg, error) {
	if cfg.Replicas != 1 {
		return nil
	}
	return func(ctx context.Context, key string) (*jetstream.RawStreamMsg, error) {
		return natsx.LastMsgDirect(ctx, nc, "KV_"+cfg.Bucket, "$KV."+cfg.Bucket+"."+key)
	}
}

// randomID is 12 random bytes in base64url.
func randomID() (string, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Start opens the KV bucket and the events stream (creating them if
// needed), subscribes to the timer client events, registers the micro
// service and joins the instances sharing the partitions. ctx bounds the
// start only; Stop ends the service.
func Start(ctx context.Context, log *slog.Logger, nc *nats.Conn, cfg Config) (*Service, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("timer config: %w", err)
	}
	holder, err := randomID()
	if err != nil {
		return nil, fmt.Errorf("lease identity: %w", err)
	}
	instance := cfg.Instance
	if instance == "" {
		instance = holder
	}
	log = log.With("instance", instance)
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	kv, markerTTL, err := openBucket(ctx, js, cfg)
	if err != nil {
		return nil, err
	}
	stream, err := openStream(ctx, js, cfg)
	if err != nil {
		return nil, err
	}
	s := &Service{
		log:      log,
		nc:       nc,
		cfg:      cfg,
		instance: instance,
		holder:   holder,
		js:       js,
		kv:       kv,
		store: &store{kv: kv, log: log, partitions: cfg.Partitions, markerTTL: markerTTL,
			last: func(ctx context.Context, key string) (*jetstream.RawStreamMsg, error) {
				return natsx.LastMsg(ctx, nc, "KV_"+cfg.Bucket, "$KV."+cfg.Bucket+"."+key)
			},
			lastDirect: directReader(nc, cfg)},
		notify:    client.New(nc),
		sem:       make(chan struct{}, maxInFlight),
		removals:  newRetryQueue[removal](),
		stopLease: make(chan struct{}),
	}
	s.ticker = newTicker(log, nc, cfg.Partitions, cfg.TickBatch, s.pushEdge)
	// A change this instance wrote reaches its ticker at once, not only
	// through the partition's watch: a new timer's first tick does not wait
	// for the watch's delivery.
	s.store.written = func(key string, rev uint64, doc *userDoc) {
		if uid, err := uidFromKey(key); err == nil {
			s.ticker.written(uid, rev, doc, time.Now())
		}
	}
	s.store.batch = newBatcher(log, js, nc, cfg.Bucket, markerTTL)
	s.store.batch.written = s.store.written
	s.edges = newEdger(log, js, stream, s.ticker.live, s.enqueueRemoval)
	s.coord = newCoordinator(log, cfg, kv, markerTTL, holder, instance, s.ticker, s)

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.runCtx, s.cancel = runCtx, cancel
	s.wg.Add(4)
	go func() { defer s.wg.Done(); s.store.batch.run(runCtx) }()
	go func() { defer s.wg.Done(); s.ticker.sched.Run(runCtx) }()
	go func() { defer s.wg.Done(); s.removals.run(runCtx, s.removeBatch) }()
	go func() { defer s.wg.Done(); s.edges.run(runCtx) }()

	if err := s.subscribe(); err != nil {
		s.shutdown()
		return nil, err
	}
	// Once Start returns, events from other connections reach the
	// subscriptions: the server has processed them.
	if err := nc.FlushTimeout(opTimeout); err != nil {
		s.shutdown()
		return nil, fmt.Errorf("flush subscriptions: %w", err)
	}
	if err := s.coord.watch(runCtx); err != nil {
		s.shutdown()
		return nil, fmt.Errorf("watch leases: %w", err)
	}
	s.leaseWG.Add(1)
	go func() { defer s.leaseWG.Done(); s.coord.run(s.stopLease) }()
	log.Info("timer service started", "bucket", cfg.Bucket, "partitions", cfg.Partitions, "lease_ttl", cfg.LeaseTTL, "holder", holder)
	return s, nil
}

// Instance is this instance's name.
func (s *Service) Instance() string { return s.instance }

// Status reports the partitions this instance drives.
func (s *Service) Status() api.TimerStatus {
	st, _ := s.status()
	return st
}

// status is Status and the sum of the ticks' lateness (for the metrics).
func (s *Service) status() (api.TimerStatus, time.Duration) {
	parts, n := s.ticker.owned()
	ticks, late, lateSum := s.ticker.tickStats()
	return api.TimerStatus{
		Instance:     s.instance,
		Holder:       s.holder,
		Partitions:   parts,
		Timers:       n,
		Members:      len(s.coord.live(s.coord.view(), time.Now())),
		Ticks:        ticks,
		TickLateness: late,
	}, lateSum
}

// startPartition watches partition p's timers into the ticker (term gen).
func (s *Service) startPartition(p int, gen uint64) (func(), error) {
	ctx, cancel := context.WithCancel(s.runCtx)
	// ctx lives as long as the watch: bound only its creation.
	guard := time.AfterFunc(opTimeout, cancel)
	w, err := s.kv.Watch(ctx, partitionKeys(p))
	if !guard.Stop() && err == nil {
		err = errors.New("timed out")
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch partition %d: %w", p, err)
	}
	go func() {
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			uid, err := uidFromKey(e.Key())
			if err != nil {
				s.log.Warn("ignoring foreign key in timer bucket", "key", e.Key())
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				s.ticker.apply(p, gen, uid, e.Revision(), nil, time.Now())
				continue
			}
			doc := decodeDoc(s.log, e.Key(), e.Value())
			s.ticker.apply(p, gen, uid, e.Revision(), &doc, time.Now())
		}
		if ctx.Err() != nil {
			return // stopped: replaced by a new watch, or the term ended
		}
		select {
		case s.coord.ended <- partGen{p, gen}:
		case <-ctx.Done():
		}
	}()
	return func() { cancel(); _ = w.Stop() }, nil
}

// flush waits until the finished timers' edges and removals are done
// (bounded by flushTimeout).
func (s *Service) flush() {
	deadline := time.Now().Add(flushTimeout)
	for s.unfinished.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := s.unfinished.Load(); n > 0 {
		s.log.Warn("finished timers not yet removed at stop; the next holder completes them", "count", n)
	}
}

func (s *Service) pushEdge(x edge) {
	s.unfinished.Add(1)
	s.edges.push(x)
}

func (s *Service) subscribe() error {
	for _, ev := range []string{api.EventTimerStart, api.EventTimerStop, api.EventTimerList} {
		subj, err := subject.In(ev)
		if err != nil {
			return fmt.Errorf("subject of %s: %w", ev, err)
		}
		sub, err := s.nc.QueueSubscribe(subj, QueueGroup, s.onEvent)
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", subj, err)
		}
		s.subs = append(s.subs, sub)
	}
	sub, err := s.nc.Subscribe(subject.EventConnected, s.onConnected)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", subject.EventConnected, err)
	}
	s.subs = append(s.subs, sub)
	svc, err := micro.AddService(s.nc, micro.Config{
		Name:        ServiceName,
		Version:     Version,
		Description: "Switchboard timers",
		Metadata:    map[string]string{"instance": s.instance, "holder": s.holder},
		// `nats micro stats switchboard-timer` shows, per instance, the
		// partitions it drives and its timers.
		StatsHandler: func(*micro.Endpoint) any { return s.Status() },
	})
	if err != nil {
		return fmt.Errorf("add micro service: %w", err)
	}
	s.micro = svc
	err = svc.AddEndpoint("list", natsx.Handle(s.log, opTimeout, s.listAPI), micro.WithEndpointSubject(subject.TimerListAPI))
	if err != nil {
		return fmt.Errorf("add endpoint %s: %w", subject.TimerListAPI, err)
	}
	return nil
}

// Stop unsubscribes, stops ticking, completes the timers that just
// finished and releases the partition leases so the other instances take
// over at once. It does not close the NATS connection.
func (s *Service) Stop() error {
	s.stopOnce.Do(func() { s.stopErr = s.shutdown() })
	return s.stopErr
}

func (s *Service) shutdown() error {
	var errs []error
	if s.micro != nil {
		if err := s.micro.Stop(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			errs = append(errs, fmt.Errorf("stop micro service: %w", err))
		}
	}
	// Drain: events already received are still answered; new ones go to
	// the other instances of the queue group.
	for _, sub := range s.subs {
		if err := sub.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
			errs = append(errs, fmt.Errorf("drain %s: %w", sub.Subject, err))
		}
	}
	deadline := time.Now().Add(flushTimeout)
	for _, sub := range s.subs {
		for sub.IsValid() && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	s.hmu.Lock()
	s.closing = true
	s.hmu.Unlock()
	s.hwg.Wait()
	if s.coord != nil {
		close(s.stopLease) // the lease loop hands every partition back
		s.leaseWG.Wait()
	}
	s.cancel()
	s.wg.Wait()
	return errors.Join(errs...)
}

// onEvent runs a client event's handler on a bounded number of goroutines.
func (s *Service) onEvent(m *nats.Msg) {
	s.hmu.Lock()
	if s.closing {
		s.hmu.Unlock()
		return
	}
	s.hwg.Add(1)
	s.hmu.Unlock()
	s.sem <- struct{}{}
	go func() {
		defer func() { <-s.sem; s.hwg.Done() }()
		s.handle(m)
	}()
}

func (s *Service) handle(m *nats.Msg) {
	ev, err := client.ParseEvent(s.nc, m)
	if err != nil {
		s.log.Debug("bad client event", "subject", m.Subject, "err", err)
		s.refuseRaw(m, "invalid event arguments")
		return
	}
	if ev.UserID == "" || ev.DeviceID == "" {
		s.fail(ev, api.CodeBadRequest, "missing user or device")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	switch ev.Name {
	case api.EventTimerStart:
		s.start(ctx, ev)
	case api.EventTimerStop:
		s.stop(ctx, ev)
	case api.EventTimerList:
		s.list(ctx, ev)
	}
}

// refuseRaw answers a message whose body is not an argument array.
func (s *Service) refuseRaw(m *nats.Msg, msg string) {
	var err error
	switch {
	case m.Reply != "":
		r := nats.NewMsg(m.Reply)
		r.Header.Set(micro.ErrorCodeHeader, fmt.Sprint(api.CodeBadRequest))
		r.Header.Set(micro.ErrorHeader, msg)
		err = s.nc.PublishMsg(r)
	case m.Header.Get(api.HeaderSocket) != "":
		err = s.notify.NotifyConn(m.Header.Get(api.HeaderSocket), api.EventException, api.ErrorStatus(msg))
	}
	if err != nil {
		s.log.Debug("refuse event", "subject", m.Subject, "err", err)
	}
}

func (s *Service) fail(ev *client.Event, code int, msg string) {
	if err := ev.Fail(code, msg); err != nil {
		s.log.Debug("answer event", "event", ev.Name, "err", err)
	}
}

func (s *Service) ack(ev *client.Event, v any) {
	if err := ev.Ack(v); err != nil {
		s.log.Debug("answer event", "event", ev.Name, "err", err)
	}
}

// storeFailed reports a storage error to the client.
func (s *Service) storeFailed(ev *client.Event, err error) {
	s.log.Error("timer storage", "event", ev.Name, "user", ev.UserID, "err", err)
	s.fail(ev, api.CodeUnavailable, "Service unavailable")
}

var errTooMany = errors.New("too many timers")

func (s *Service) start(ctx context.Context, ev *client.Event) {
	dur, why := parseStart(ev.Args)
	if why != "" {
		s.fail(ev, api.CodeBadRequest, why)
		return
	}
	key, err := s.store.key(ev.UserID)
	if err != nil {
		s.fail(ev, api.CodeBadRequest, "invalid user")
		return
	}
	if _, err := subject.Encode(ev.DeviceID); err != nil {
		s.fail(ev, api.CodeBadRequest, "invalid device")
		return
	}
	var started, replaced, finished record
	err = s.store.mutate(ctx, key, func(doc *userDoc, now int64) (bool, error) {
		replaced, finished = record{}, record{}
		if old, ok := doc.Timers[ev.DeviceID]; ok && old.valid() {
			if old.Deadline > now {
				replaced = old
			} else {
				finished = old // past its deadline, its end maybe not sent yet
			}
		}
		running := 0
		for dev, r := range doc.Timers {
			if dev != ev.DeviceID && r.valid() && r.Deadline > now {
				running++
			}
		}
		if running >= s.cfg.MaxTimersPerUser {
			return false, errTooMany
		}
		if old, ok := doc.Timers[ev.DeviceID]; ok && old.Start >= now {
			now = old.Start + 1 // a new timer is never the one it replaces
		}
		started = record{Dur: dur, Start: now, Deadline: now + int64(dur)*1000}
		doc.Timers[ev.DeviceID] = started
		return true, nil
	})
	switch {
	case errors.Is(err, errTooMany):
		s.fail(ev, api.CodeTooMany, "Too many timers")
	case err != nil:
		s.storeFailed(ev, err)
	default:
		s.log.Debug("timer started", "user", ev.UserID, "device", ev.DeviceID, "dur", dur)
		// Events first: a device's events are stored in the order its
		// client saw the acks.
		s.finish(ctx, ev.UserID, ev.DeviceID, finished)
		if replaced.Start != 0 {
			s.publishEvent(ctx, subject.TimerStopped, ev.UserID, ev.DeviceID, replaced, api.TimerReasonReplaced)
		}
		s.publishEvent(ctx, subject.TimerStarted, ev.UserID, ev.DeviceID, started, "")
		s.ack(ev, api.TimerStartAck{Status: "ok", Timer: dur})
	}
}

// finish sends the end of a timer that a timerStart or timerStop removed
// from the store after its deadline: while its partition had no holder
// (a NATS node or instance failing), its 0, timerDone and event may not
// have gone out yet, and once the record is gone no holder sends them. They
// carry the message ids of the edge path, so the stream drops them if the
// holder sent them already; they go out before the request's ack, so the
// device sees the old timer end before the new one starts.
func (s *Service) finish(ctx context.Context, uid, dev string, rec record) {
	if rec.Start == 0 {
		return
	}
	x := edge{uid: uid, dev: dev, rec: rec}
	for phase := range phases {
		m, err := edgeMsg(x, phase)
		if err == nil {
			err = s.storeMsg(ctx, m)
		}
		if err != nil {
			s.log.Warn("end of a removed timer not stored", "user", uid, "device", dev, "err", err)
			return
		}
	}
}

// eventPatience bounds the retries of one timer event.
const eventPatience = 3 * time.Second

// storeMsg stores m in the events stream, retrying for up to eventPatience
// while the stream does not answer; m's message id makes a repeat harmless.
func (s *Service) storeMsg(ctx context.Context, m *nats.Msg) error {
	// First an asynchronous publish: a burst of requests shares its
	// acknowledgements' subscription and costs no request state each.
	if ack, err := s.js.PublishMsgAsync(m); err == nil {
		select {
		case <-ack.Ok():
			return nil
		case <-ack.Err():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return natsx.Retry(ctx, eventPatience, func(ctx context.Context) error {
		_, err := s.js.PublishMsg(ctx, m)
		return err
	})
}

// publishEvent stores a timer event for backend services. A failure is
// logged: the client's request succeeded.
// The stream may not answer for a few seconds (a leader election):
// storeMsg retries.
func (s *Service) publishEvent(ctx context.Context, kind, uid, dev string, rec record, reason string) {
	m, err := timerEventMsg(kind, uid, dev, rec, reason)
	if err == nil {
		err = s.storeMsg(ctx, m)
	}
	if err != nil {
		s.log.Warn("timer event not stored", "kind", kind, "user", uid, "device", dev, "err", err)
	}
}

func (s *Service) stop(ctx context.Context, ev *client.Event) {
	key, err := s.store.key(ev.UserID)
	if err != nil {
		s.fail(ev, api.CodeBadRequest, "invalid user")
		return
	}
	var stopped, finished record
	err = s.store.mutate(ctx, key, func(doc *userDoc, now int64) (bool, error) {
		stopped, finished = record{}, record{}
		old, ok := doc.Timers[ev.DeviceID]
		if !ok {
			return false, nil
		}
		switch {
		case old.valid() && old.Deadline > now:
			stopped = old
		case old.valid():
			finished = old
		}
		delete(doc.Timers, ev.DeviceID)
		return true, nil
	})
	if err != nil {
		s.storeFailed(ev, err)
		return
	}
	s.finish(ctx, ev.UserID, ev.DeviceID, finished)
	if stopped.Start != 0 {
		s.publishEvent(ctx, subject.TimerStopped, ev.UserID, ev.DeviceID, stopped, api.TimerReasonStopped)
	}
	s.ack(ev, api.Status{Status: "ok"})
}

func (s *Service) list(ctx context.Context, ev *client.Event) {
	if !ev.WantsAck() {
		s.log.Debug("timerList without ack ignored", "user", ev.UserID, "socket", ev.SocketID)
		return
	}
	timers, err := s.timers(ctx, ev.UserID)
	if err != nil {
		var e *natsx.Error
		if errors.As(err, &e) {
			s.fail(ev, e.Code, e.Message)
			return
		}
		s.storeFailed(ev, err)
		return
	}
	s.ack(ev, api.TimerListAck{Status: "ok", Timers: timers})
}

// timers lists a user's running timers.
func (s *Service) timers(ctx context.Context, uid string) ([]api.TimerInfo, error) {
	key, err := s.store.key(uid)
	if err != nil {
		return nil, natsx.Errorf(api.CodeBadRequest, "invalid user")
	}
	doc, _, err := s.store.load(ctx, key)
	if err != nil {
		return nil, err
	}
	return list(doc, time.Now().UnixMilli()), nil
}

// listAPI serves subject.TimerListAPI for backend services.
func (s *Service) listAPI(ctx context.Context, req api.TimerListRequest) (api.TimerListReply, error) {
	if req.UserID == "" {
		return api.TimerListReply{}, natsx.Errorf(api.CodeBadRequest, "userId is required")
	}
	timers, err := s.timers(ctx, req.UserID)
	if err != nil {
		var e *natsx.Error
		if errors.As(err, &e) {
			return api.TimerListReply{}, e
		}
		return api.TimerListReply{}, natsx.Errorf(api.CodeUnavailable, "timer storage unavailable: %v", err)
	}
	return api.TimerListReply{Timers: timers}, nil
}

// onConnected sends the current tick to a connection whose device has a
// running timer (subscribed while holding the lease).
func (s *Service) onConnected(m *nats.Msg) {
	var le api.LifecycleEvent
	if err := json.Unmarshal(m.Data, &le); err != nil {
		s.log.Debug("bad lifecycle event", "err", err)
		return
	}
	c := le.Conn
	if c.UserID == "" || c.DeviceID == "" || c.SocketID == "" {
		return
	}
	r, ok := s.ticker.current(c.UserID, c.DeviceID)
	if !ok {
		return
	}
	if err := s.notify.NotifyConn(c.SocketID, api.EventTick, tickPayload(r)); err != nil {
		s.log.Debug("tick to new connection", "socket", c.SocketID, "err", err)
	}
}

// ---- removal of finished timers ----

// removal asks for a finished timer to be removed from KV, provided it still
// has the same start (a replaced timer is left alone).
type removal struct {
	p        int
	gen      uint64
	uid, dev string
	start    int64
}

// enqueueRemoval takes a timer whose edge left the edger: stored, it is
// removed from KV; not stored, the partition's next holder completes it.
func (s *Service) enqueueRemoval(r removal, stored bool) {
	if !stored {
		s.unfinished.Add(-1)
		return
	}
	s.removals.push(r)
}

// removeBatch removes finished timers and returns those to try again: the
// failed ones whose partition this instance still drives.
func (s *Service) removeBatch(ctx context.Context, batch []removal) (retry []removal) {
	for _, r := range batch {
		err := s.removeDone(ctx, r)
		if err != nil && s.ticker.live(r.p, r.gen) && ctx.Err() == nil {
			retry = append(retry, r)
			continue
		}
		if err != nil {
			s.log.Warn("finished timer left to the next holder", "user", r.uid, "device", r.dev, "err", err)
		}
		s.unfinished.Add(-1)
	}
	if len(retry) > 0 {
		s.log.Warn("removing finished timers failed, retrying", "count", len(retry))
	}
	return retry
}

// removeDone deletes a finished timer from KV unless it was replaced.
func (s *Service) removeDone(ctx context.Context, r removal) error {
	key, err := s.store.key(r.uid)
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	return s.store.mutate(ctx, key, func(doc *userDoc, _ int64) (bool, error) {
		if rec, ok := doc.Timers[r.dev]; !ok || rec.Start != r.start {
			return false, nil
		}
		delete(doc.Timers, r.dev)
		return true, nil
	})
}
