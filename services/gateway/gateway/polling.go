package gateway

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/engineio"
)

// pollTransport is Engine.IO HTTP long-polling: packets wait in a bounded
// queue until a GET takes them all in one payload.
type pollTransport struct {
	e          *engine
	limit      int // packets
	limitBytes int

	mu       sync.Mutex
	queue    []engineio.Packet
	bytes    int                    // of queue
	waiter   chan []engineio.Packet // the GET being held, if any
	closed   bool
	upgraded bool // the engine moved to WebSocket: polls get 400
	probing  bool // a WebSocket probe succeeded: polls get a NOOP soon
	// upgradedCh is closed when the engine moved to WebSocket.
	upgradedCh chan struct{}
}

// upgradeGrace is how long a poll that arrives between a successful probe
// and the upgrade waits for the upgrade (the client sends `5` on the
// WebSocket just before it): then it gets 400, as after the upgrade.
const upgradeGrace = 100 * time.Millisecond

func (t *pollTransport) setProbing(on bool) {
	t.mu.Lock()
	t.probing = on
	t.mu.Unlock()
	if on {
		t.noop()
	}
}

func newPollTransport(e *engine, limit, limitBytes int) *pollTransport {
	return &pollTransport{e: e, limit: limit, limitBytes: limitBytes, upgradedCh: make(chan struct{})}
}

func packetBytes(ps []engineio.Packet) int {
	n := 0
	for _, p := range ps {
		n += len(p.Data) + 1
	}
	return n
}

func (t *pollTransport) send(ps ...engineio.Packet) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	n := packetBytes(ps)
	if len(t.queue)+len(ps) > t.limit || t.bytes+n > t.limitBytes {
		t.mu.Unlock()
		// The client stopped polling while data piles up: a slow client.
		go t.e.close(closeSlow)
		return
	}
	t.queue = append(t.queue, ps...)
	t.bytes += n
	t.flushLocked()
	t.mu.Unlock()
}

// flushLocked hands the queue to a waiting GET.
func (t *pollTransport) flushLocked() {
	if t.waiter == nil || len(t.queue) == 0 {
		return
	}
	t.waiter <- t.queue
	t.waiter = nil
	t.queue, t.bytes = nil, 0
}

// close answers a held GET with a close packet; later GETs get 400.
func (t *pollTransport) close(int, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	t.queue = append(t.queue, engineio.Packet{Type: engineio.Close})
	t.flushLocked()
	t.closed = true
}

// noop answers a held GET with a NOOP (upgrade, POSTed close).
func (t *pollTransport) noop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.waiter != nil {
		t.waiter <- []engineio.Packet{{Type: engineio.Noop}}
		t.waiter = nil
	}
}

// drain takes whatever is queued (moving to WebSocket); a held poll gets a
// NOOP.
func (t *pollTransport) drain() []engineio.Packet {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.waiter != nil {
		t.waiter <- []engineio.Packet{{Type: engineio.Noop}}
		t.waiter = nil
	}
	q := t.queue
	t.queue, t.bytes = nil, 0
	if !t.upgraded {
		t.upgraded = true
		close(t.upgradedCh)
	}
	return q
}

var (
	errPollConflict = errors.New("concurrent poll")
	errPollGone     = errors.New("poll on a closed or upgraded session")
)

// poll waits for packets: at once when some are queued, else until data,
// a ping or the session's end. A second concurrent poll is a protocol
// violation that ends the session.
func (t *pollTransport) poll(ctx context.Context) ([]engineio.Packet, error) {
	t.mu.Lock()
	if t.closed && len(t.queue) == 0 || t.upgraded {
		t.mu.Unlock()
		return nil, errPollGone
	}
	if t.waiter != nil {
		t.mu.Unlock()
		return nil, errPollConflict
	}
	if t.probing && len(t.queue) == 0 {
		t.mu.Unlock()
		select {
		case <-t.upgradedCh:
			return nil, errPollGone
		case <-time.After(upgradeGrace):
		case <-ctx.Done():
		}
		return []engineio.Packet{{Type: engineio.Noop}}, nil
	}
	if len(t.queue) > 0 {
		q := t.queue
		t.queue, t.bytes = nil, 0
		t.mu.Unlock()
		return q, nil
	}
	ch := make(chan []engineio.Packet, 1)
	t.waiter = ch
	t.mu.Unlock()
	select {
	case q := <-ch:
		return q, nil
	case <-ctx.Done():
		t.mu.Lock()
		if t.waiter == ch {
			t.waiter = nil
			t.mu.Unlock()
			return nil, ctx.Err()
		}
		t.mu.Unlock()
		// Packets were handed over just as the client left: put them back.
		q := <-ch
		t.mu.Lock()
		t.queue = append(q, t.queue...)
		t.bytes += packetBytes(q)
		t.mu.Unlock()
		return nil, ctx.Err()
	}
}

const pollContentType = "text/plain; charset=UTF-8"

// httpReply is the answer to one polling request, local or forwarded.
type httpReply struct {
	status      int
	contentType string
	body        []byte
}

func textReply(status int, body string) httpReply {
	return httpReply{status: status, contentType: "text/html", body: []byte(body)}
}

func engineErrReply(e engineError) httpReply {
	return httpReply{status: e.status, contentType: "application/json", body: e.json()}
}

// servePoll answers a GET or POST for a polling session held here; vs are
// the verdicts that came with a POST forwarded by another gateway.
func (e *engine) servePoll(ctx context.Context, method string, body []byte, vs []verdict) httpReply {
	t, ok := e.pollTr()
	if !ok {
		return engineErrReply(errBadRequest)
	}
	switch method {
	case http.MethodGet:
		pctx, cancel := context.WithTimeout(ctx, e.g.cfg.PingInterval+e.g.cfg.PingTimeout)
		defer cancel()
		q, err := t.poll(pctx)
		switch {
		case errors.Is(err, errPollConflict):
			e.close(closeMalformed) // the held poll gets a close packet
			return engineErrReply(errBadRequest)
		case errors.Is(err, errPollGone):
			return engineErrReply(errBadRequest)
		case err != nil:
			return httpReply{status: http.StatusOK, contentType: pollContentType, body: engineio.EncodePayload([]engineio.Packet{{Type: engineio.Noop}})}
		}
		return httpReply{status: http.StatusOK, contentType: pollContentType, body: engineio.EncodePayload(q)}
	case http.MethodPost:
		if len(body) > e.g.cfg.MaxPayload {
			e.close(closeMalformed)
			return textReply(http.StatusRequestEntityTooLarge, "payload too large")
		}
		e.inMu.Lock()
		defer e.inMu.Unlock()
		e.verdicts = vs
		defer func() { e.verdicts = nil }()
		ps, err := engineio.DecodePayload(body)
		if err != nil {
			e.malformed(err)
			return engineErrReply(errBadRequest)
		}
		for _, p := range ps {
			if p.Type == engineio.Close {
				t.noop()
				e.close(closeClient)
				break
			}
			e.onPacket(p)
		}
		return textReply(http.StatusOK, "ok")
	}
	return engineErrReply(errBadMethod)
}

func (e *engine) pollTr() (*pollTransport, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t, ok := e.tr.(*pollTransport)
	if !ok {
		t = e.polling
	}
	return t, t != nil
}

// readBody reads at most limit+1 bytes, so that oversize is detectable.
func readBody(r *http.Request, limit int) ([]byte, error) {
	return io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
}

// pollDeadline bounds how long a forwarded GET may be held.
func (g *Gateway) pollDeadline() time.Duration {
	return g.cfg.PingInterval + g.cfg.PingTimeout + time.Second
}
