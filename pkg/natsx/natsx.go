// Package natsx holds the NATS helpers Switchboard's services share:
// connecting with logging handlers, draining on close, and typed JSON
// request/reply over nats.go micro services with numeric error codes.
package natsx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/switchboard-rt/switchboard/pkg/config"
)

// Connect dials NATS with reconnects forever and logs connection changes.
// While no server answers it tries again with backoff (up to 5 s apart)
// until ctx ends, so that a service started before NATS waits for it; any
// other failure (credentials, TLS) returns at once.
func Connect(ctx context.Context, log *slog.Logger, url, name string, opts ...nats.Option) (*nats.Conn, error) {
	base := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			log.Error("nats async error", "subject", subj, "err", err)
		}),
	}
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		nc, err := nats.Connect(url, append(base, opts...)...)
		if err == nil {
			if attempt > 1 {
				log.Info("nats connected", "url", nc.ConnectedUrlRedacted(), "attempts", attempt)
			}
			return nc, nil
		}
		if !errors.Is(err, nats.ErrNoServers) {
			return nil, fmt.Errorf("connect nats %s: %w", config.RedactURL(url), err)
		}
		log.Warn("waiting for nats", "url", config.RedactURL(url), "attempt", attempt, "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect nats %s: %w (gave up: %w)", config.RedactURL(url), err, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// Drain drains nc and waits (up to timeout) until it is closed.
func Drain(nc *nats.Conn, timeout time.Duration) {
	if nc == nil || nc.IsClosed() {
		return
	}
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	select {
	case <-closed:
	case <-time.After(timeout):
		nc.Close()
	}
}

// Error is a service error with a numeric code, carried by micro's
// Nats-Service-Error-Code and Nats-Service-Error headers.
type Error struct {
	Code    int
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s", e.Code, e.Message) }

// Errorf builds an *Error.
func Errorf(code int, format string, a ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, a...)}
}

// ErrUnavailable is wrapped when no service answered in time.
var ErrUnavailable = errors.New("service unavailable")

// CodeOf returns the numeric code of err (500 when err is not an *Error,
// 503 when it wraps ErrUnavailable).
func CodeOf(err error) int {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e.Code
	case errors.Is(err, ErrUnavailable):
		return 503
	}
	return 500
}

// ErrorFromMsg returns the service error carried by a reply, or nil.
func ErrorFromMsg(m *nats.Msg) *Error {
	if m == nil || m.Header == nil {
		return nil
	}
	code := m.Header.Get(micro.ErrorCodeHeader)
	desc := m.Header.Get(micro.ErrorHeader)
	if code == "" && desc == "" {
		return nil
	}
	n, err := strconv.Atoi(code)
	if err != nil {
		n = 500
	}
	return &Error{Code: n, Message: desc}
}

// Requester is the part of *nats.Conn that RequestMsg needs.
type Requester interface {
	RequestMsgWithContext(ctx context.Context, m *nats.Msg) (*nats.Msg, error)
}

var _ Requester = (*nats.Conn)(nil)

// RequestMsg sends msg as a request and returns the reply. No responders and
// timeouts wrap ErrUnavailable.
func RequestMsg(ctx context.Context, nc Requester, msg *nats.Msg) (*nats.Msg, error) {
	reply, err := nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("%s: %w: %w", msg.Subject, ErrUnavailable, err)
		}
		return nil, fmt.Errorf("request %s: %w", msg.Subject, err)
	}
	return reply, nil
}

// Request sends req as JSON and decodes the JSON reply into a Resp. A reply
// carrying a service error is returned as *Error.
func Request[Resp any](ctx context.Context, nc Requester, subj string, req any) (Resp, error) {
	var resp Resp
	data, err := json.Marshal(req)
	if err != nil {
		return resp, fmt.Errorf("encode request: %w", err)
	}
	reply, err := RequestMsg(ctx, nc, &nats.Msg{Subject: subj, Data: data})
	if err != nil {
		return resp, err
	}
	if e := ErrorFromMsg(reply); e != nil {
		return resp, e
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return resp, fmt.Errorf("decode reply of %s: %w", subj, err)
	}
	return resp, nil
}

// Handle adapts a typed function to a micro.Handler: the request body is
// decoded as JSON into a Req (400 when it is not), fn runs with a context
// bounded by timeout, and its result is sent as JSON or as a coded error.
//
// micro calls a handler for one request at a time; Handle runs up to
// MaxInFlight requests of the endpoint at once, each on its own goroutine,
// and makes the subscription wait beyond that. Handlers must therefore be
// safe for concurrent use and must not rely on the order of requests.
func Handle[Req, Resp any](log *slog.Logger, timeout time.Duration, fn func(context.Context, Req) (Resp, error)) micro.Handler {
	slots := make(chan struct{}, MaxInFlight)
	return micro.HandlerFunc(func(r micro.Request) {
		slots <- struct{}{}
		go func() {
			defer func() { <-slots }()
			serve(log, timeout, fn, r)
		}()
	})
}

// MaxInFlight bounds the requests one Handle endpoint serves at once.
const MaxInFlight = 64

func serve[Req, Resp any](log *slog.Logger, timeout time.Duration, fn func(context.Context, Req) (Resp, error), r micro.Request) {
	var req Req
	if err := json.Unmarshal(r.Data(), &req); err != nil {
		respondErr(log, r, Errorf(400, "invalid request: %v", err))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := fn(ctx, req)
	if err != nil {
		respondErr(log, r, err)
		return
	}
	if err := r.RespondJSON(resp); err != nil {
		log.Debug("respond", "subject", r.Subject(), "err", err)
	}
}

func respondErr(log *slog.Logger, r micro.Request, err error) {
	code := CodeOf(err)
	msg := err.Error()
	var e *Error
	if errors.As(err, &e) {
		msg = e.Message
	}
	if code >= 500 {
		log.Error("request failed", "subject", r.Subject(), "err", err)
		switch {
		case e != nil:
		case errors.Is(err, ErrUnavailable):
			msg = "Service unavailable"
		default:
			msg = "internal error"
		}
	}
	if r.Reply() == "" {
		return
	}
	// r.Respond with the error headers rather than r.Error: Handle serves
	// requests on goroutines of its own, and micro reads what r.Error
	// records once the handler has returned (a data race).
	hdr := micro.Headers{micro.ErrorHeader: {msg}, micro.ErrorCodeHeader: {strconv.Itoa(code)}}
	if rerr := r.Respond(nil, micro.WithHeaders(hdr)); rerr != nil {
		log.Debug("respond", "subject", r.Subject(), "err", rerr)
	}
}

// RespondError answers r with a coded error (for handlers not built by Handle).
func RespondError(log *slog.Logger, r micro.Request, err error) { respondErr(log, r, err) }
