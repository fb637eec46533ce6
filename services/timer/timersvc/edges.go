package timersvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// headerTimerStart names the timer (its start, Unix ms) an edge or timer
// event belongs to.
const headerTimerStart = "Sb-Timer-Start"

// edgeTimeout bounds one round of edge publishes (each phase of a batch).
const edgeTimeout = 5 * time.Second

// openStream creates or updates the timer events stream: edges on
// sb.timer.edge.<uid>.<device>, republished by the server to the device's
// delivery subject once stored, and events for backend services on
// sb.timer.event.>. Messages carry Nats-Msg-Id, so a repeat within the
// duplicate window is neither stored nor republished.
//
// A stream that exists with these settings is bound as it is (that needs
// only the right to read its info: it may have been provisioned by an
// administrator); otherwise it is created or updated.
func openStream(ctx context.Context, js jetstream.JetStream, cfg Config) (st jetstream.Stream, err error) {
	err = natsx.Retry(ctx, 30*time.Second, func(ctx context.Context) error {
		st, err = openStreamOnce(ctx, js, cfg)
		return err
	})
	return st, err
}

func openStreamOnce(ctx context.Context, js jetstream.JetStream, cfg Config) (jetstream.Stream, error) {
	want := streamConfig(cfg)
	st, err := js.Stream(ctx, cfg.EventsStream)
	switch {
	case err == nil && streamMatches(st.CachedInfo().Config, want):
		return st, nil
	case err != nil && !errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, fmt.Errorf("open stream %s: %w", cfg.EventsStream, err)
	}
	st, err = js.CreateOrUpdateStream(ctx, want)
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", cfg.EventsStream, err)
	}
	return st, nil
}

// streamMatches reports whether an existing stream has the settings that
// matter of want.
func streamMatches(have, want jetstream.StreamConfig) bool {
	return slices.Equal(have.Subjects, want.Subjects) && have.Replicas == want.Replicas &&
		have.MaxAge == want.MaxAge && have.MaxBytes == want.MaxBytes && have.Duplicates == want.Duplicates &&
		have.AllowDirect == want.AllowDirect && have.RePublish != nil && *have.RePublish == *want.RePublish
}

// streamConfig is the events stream as cfg asks for it.
func streamConfig(cfg Config) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        cfg.EventsStream,
		Description: "Switchboard timer edges (republished to devices) and timer events",
		Subjects:    []string{subject.TimerEdges, subject.TimerEvents},
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.EventsMaxAge,
		MaxBytes:    cfg.EventsMaxBytes,
		Duplicates:  cfg.DedupWindow,
		Discard:     jetstream.DiscardOld,
		AllowDirect: true,
		RePublish:   &jetstream.RePublish{Source: subject.TimerEdges, Destination: subject.TimerEdgeRepublish},
	}
}

// msgID names one message of one timer: the repeat of a message by any
// instance carries the same id. A device's timers differ in start (a
// replacement starts at least 1 ms after the timer it replaces) or, when
// one was stopped and the next started within the same millisecond, in
// dur.
func msgID(uid, dev string, rec record, kind string) string {
	u, _ := subject.Encode(uid)
	d, _ := subject.Encode(dev)
	return u + "." + d + "." + strconv.FormatInt(rec.Start, 10) + "." + strconv.Itoa(rec.Dur) + "." + kind
}

// timerEventMsg builds a timer event for backend services.
func timerEventMsg(kind, uid, dev string, rec record, reason string) (*nats.Msg, error) {
	subj, err := subject.TimerEvent(kind, uid, dev)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(api.TimerEvent{
		UserID: uid, DeviceID: dev, Dur: rec.Dur,
		Start:    time.UnixMilli(rec.Start).UTC(),
		Deadline: time.UnixMilli(rec.Deadline).UTC(),
		Reason:   reason,
	})
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(subj)
	m.Header.Set(api.HeaderEvent, timerEventNames[kind])
	m.Header.Set(headerTimerStart, strconv.FormatInt(rec.Start, 10))
	m.Header.Set(jetstream.MsgIDHeader, msgID(uid, dev, rec, "event-"+kind))
	m.Data = body
	return m, nil
}

var timerEventNames = map[string]string{
	subject.TimerStarted: "timerStarted",
	subject.TimerStopped: "timerStopped",
	subject.TimerDone:    api.EventTimerDone,
}

// The phases of an edge, in the order they are stored.
const (
	phaseTick  = iota // the `0` tick to the device
	phaseDone         // `timerDone` to the device
	phaseEvent        // the timerDone event for backend services
	phases
)

// edgeMsg builds the message of one phase of an edge.
func edgeMsg(x edge, phase int) (*nats.Msg, error) {
	if phase == phaseEvent {
		return timerEventMsg(subject.TimerDone, x.uid, x.dev, x.rec, "")
	}
	subj, err := subject.TimerEdge(x.uid, x.dev)
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(subj)
	m.Header.Set(headerTimerStart, strconv.FormatInt(x.rec.Start, 10))
	if phase == phaseTick {
		m.Header.Set(api.HeaderEvent, api.EventTick)
		m.Header.Set(jetstream.MsgIDHeader, msgID(x.uid, x.dev, x.rec, "edge-tick0"))
		m.Data = tickPayload(0)
		return m, nil
	}
	m.Header.Set(api.HeaderEvent, api.EventTimerDone)
	m.Header.Set(jetstream.MsgIDHeader, msgID(x.uid, x.dev, x.rec, "edge-done"))
	m.Data, err = json.Marshal(api.TimerDone{Timer: 0, DeviceID: x.dev, Dur: x.rec.Dur})
	return m, err
}

// edger publishes the edges of finished timers through the events stream,
// phase by phase (a phase starts once the previous one is stored, so a
// device never gets timerDone before its 0), retrying while this instance
// still drives the timer's partition, then hands the timer to removal.
type edger struct {
	log    *slog.Logger
	js     jetstream.JetStream
	stream jetstream.Stream
	live   func(p int, gen uint64) bool
	// done takes each edge that leaves: stored, or given up (the
	// partition has another holder). It must not block.
	done func(r removal, stored bool)

	queue *retryQueue[edge]
}

func newEdger(log *slog.Logger, js jetstream.JetStream, stream jetstream.Stream, live func(int, uint64) bool, done func(removal, bool)) *edger {
	return &edger{log: log, js: js, stream: stream, live: live, done: done, queue: newRetryQueue[edge]()}
}

// push queues an edge; it does not block.
func (e *edger) push(x edge) { e.queue.push(x) }

func (e *edger) run(ctx context.Context) { e.queue.run(ctx, e.send) }

// send publishes a batch of edges and returns those to try again.
func (e *edger) send(ctx context.Context, batch []edge) (retry []edge) {
	from := make([]int, 0, len(batch)) // first phase still to send, per edge
	items := make([]edge, 0, len(batch))
	for _, x := range batch {
		first := phaseTick
		if x.loadedDone {
			first = e.firstUnsent(ctx, x)
		}
		items = append(items, x)
		from = append(from, first)
	}
	failed := make([]bool, len(items))
	for phase := range phases {
		var futs []jetstream.PubAckFuture
		var idx []int
		for i, x := range items {
			if failed[i] || from[i] > phase {
				continue
			}
			m, err := edgeMsg(x, phase)
			if err != nil {
				e.log.Error("build timer edge", "user", x.uid, "device", x.dev, "err", err)
				failed[i] = true
				continue
			}
			f, err := e.js.PublishMsgAsync(m)
			if err != nil {
				failed[i] = true
				continue
			}
			futs = append(futs, f)
			idx = append(idx, i)
		}
		e.await(ctx, futs, idx, failed)
	}
	for i, x := range items {
		r := removal{p: x.p, gen: x.gen, uid: x.uid, dev: x.dev, start: x.rec.Start}
		switch {
		case !failed[i]:
			e.done(r, true)
		case e.live(x.p, x.gen):
			retry = append(retry, x)
		default:
			// The partition has another holder now: it sends what is missing.
			e.log.Debug("timer edge left to the next holder", "user", x.uid, "device", x.dev)
			e.done(r, false)
		}
	}
	if len(retry) > 0 {
		e.log.Warn("timer edges not stored, retrying", "count", len(retry))
	}
	return retry
}

// await waits for the acks of one phase and marks the edges that failed.
func (e *edger) await(ctx context.Context, futs []jetstream.PubAckFuture, idx []int, failed []bool) {
	timeout := time.NewTimer(edgeTimeout)
	defer timeout.Stop()
	for j, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			e.log.Debug("store timer edge", "err", err)
			failed[idx[j]] = true
		case <-timeout.C:
			for _, i := range idx[j:] {
				failed[i] = true
			}
			return
		case <-ctx.Done():
			for _, i := range idx[j:] {
				failed[i] = true
			}
			return
		}
	}
}

// firstUnsent finds, for a timer found past its deadline, which phases of
// its edge are stored already (by an earlier holder), from the last
// messages of its subjects: the stream keeps them longer than its duplicate
// window.
func (e *edger) firstUnsent(ctx context.Context, x edge) int {
	ctx, cancel := context.WithTimeout(ctx, edgeTimeout)
	defer cancel()
	start := strconv.FormatInt(x.rec.Start, 10)
	last := func(subj string, err error) (event string, ok bool) {
		if err != nil {
			return "", false
		}
		m, err := e.stream.GetLastMsgForSubject(ctx, subj)
		if err != nil {
			if !errors.Is(err, jetstream.ErrMsgNotFound) {
				e.log.Debug("read timer edge", "subject", subj, "err", err)
			}
			return "", false
		}
		if m.Header.Get(headerTimerStart) != start {
			return "", false
		}
		return m.Header.Get(api.HeaderEvent), true
	}
	if _, ok := last(subject.TimerEvent(subject.TimerDone, x.uid, x.dev)); ok {
		return phases
	}
	ev, ok := last(subject.TimerEdge(x.uid, x.dev))
	switch {
	case ok && ev == api.EventTimerDone:
		return phaseEvent
	case ok && ev == api.EventTick:
		return phaseDone
	}
	return phaseTick
}
