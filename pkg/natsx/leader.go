package natsx

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// LastMsg reads the last message of subj in stream from the stream's leader
// ($JS.API.STREAM.MSG.GET). Key-value buckets allow direct gets, which any
// replica answers, and nats.go uses them when a stream allows them: a
// follower that has not applied the latest write yet answers with the value
// before it. A read that decides to write nothing (a release of a socket
// not found, a stop of a timer not found) must see every write already
// acknowledged, so it reads here. It returns jetstream.ErrMsgNotFound when
// subj has no message.
func LastMsg(ctx context.Context, nc *nats.Conn, stream, subj string) (*jetstream.RawStreamMsg, error) {
	req, err := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{subj})
	if err != nil {
		return nil, err
	}
	m, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+stream, req)
	if err != nil {
		return nil, fmt.Errorf("get last message of %s: %w", subj, err)
	}
	var resp struct {
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
		Message *struct {
			Subject string    `json:"subject"`
			Seq     uint64    `json:"seq"`
			Header  []byte    `json:"hdrs"`
			Data    []byte    `json:"data"`
			Time    time.Time `json:"time"`
		} `json:"message"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return nil, fmt.Errorf("get last message of %s: %w", subj, err)
	}
	switch {
	case resp.Error != nil && resp.Error.Code == 404:
		return nil, jetstream.ErrMsgNotFound
	case resp.Error != nil:
		return nil, fmt.Errorf("get last message of %s: %w", subj, &jetstream.APIError{
			Code: resp.Error.Code, ErrorCode: jetstream.ErrorCode(resp.Error.ErrCode), Description: resp.Error.Description,
		})
	case resp.Message == nil:
		return nil, fmt.Errorf("get last message of %s: empty response", subj)
	}
	hdr, err := parseHeader(resp.Message.Header)
	if err != nil {
		return nil, fmt.Errorf("get last message of %s: %w", subj, err)
	}
	return &jetstream.RawStreamMsg{
		Subject:  resp.Message.Subject,
		Sequence: resp.Message.Seq,
		Header:   hdr,
		Data:     resp.Message.Data,
		Time:     resp.Message.Time,
	}, nil
}

// parseHeader decodes a NATS header block ("NATS/1.0\r\nKey: value\r\n\r\n"),
// keeping the keys' case as nats.go does.
func parseHeader(b []byte) (nats.Header, error) {
	h := nats.Header{}
	if len(b) == 0 {
		return h, nil
	}
	lines := strings.Split(string(bytes.TrimRight(b, "\r\n")), "\r\n")
	if !strings.HasPrefix(lines[0], "NATS/1.0") {
		return nil, fmt.Errorf("bad header line %q", lines[0])
	}
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			return nil, fmt.Errorf("bad header line %q", l)
		}
		h[strings.TrimSpace(k)] = append(h[strings.TrimSpace(k)], strings.TrimSpace(v))
	}
	return h, nil
}

// LastMsgDirect reads the last message of subj in stream with a direct get
// ($JS.API.DIRECT.GET, the stream must allow direct gets): any replica may
// answer, so the value may be older than the last acknowledged write. It is
// the cheap read before a compare-and-set, which fails on a stale value;
// a decision to write nothing needs LastMsg. It returns
// jetstream.ErrMsgNotFound when subj has no message.
func LastMsgDirect(ctx context.Context, nc *nats.Conn, stream, subj string) (*jetstream.RawStreamMsg, error) {
	m, err := nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET."+stream+"."+subj, nil)
	if err != nil {
		return nil, fmt.Errorf("get last message of %s: %w", subj, err)
	}
	switch st := m.Header.Get("Status"); st {
	case "":
	case "404":
		return nil, jetstream.ErrMsgNotFound
	default:
		return nil, fmt.Errorf("get last message of %s: status %s %s", subj, st, m.Header.Get("Description"))
	}
	r, err := directMsg(m)
	if err != nil {
		return nil, fmt.Errorf("get last message of %s: %w", subj, err)
	}
	return r, nil
}

// MaxDirectBatch is the most subjects LastMsgsDirect reads at once (the
// server answers at most 1024 messages to one multi-subject direct get).
const MaxDirectBatch = 1024

// LastMsgsDirect reads the last message of each of subjs in stream with one
// direct get (a multi_last request, answered by any replica like
// LastMsgDirect, with one message per subject that has one and then an end
// of batch). Subjects without a message are absent from the result.
func LastMsgsDirect(ctx context.Context, nc *nats.Conn, stream string, subjs []string) (map[string]*jetstream.RawStreamMsg, error) {
	if len(subjs) > MaxDirectBatch {
		return nil, fmt.Errorf("get last messages: %d subjects, at most %d", len(subjs), MaxDirectBatch)
	}
	out := make(map[string]*jetstream.RawStreamMsg, len(subjs))
	if len(subjs) == 0 {
		return out, nil
	}
	req, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
	}{subjs})
	if err != nil {
		return nil, err
	}
	inbox := nc.NewInbox()
	// The answer is at most one message per subject and the end of batch: a
	// channel of that size never drops one (a synchronous subscription
	// would allocate a channel of the connection's default length).
	ch := make(chan *nats.Msg, len(subjs)+1)
	sub, err := nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, fmt.Errorf("get last messages: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest("$JS.API.DIRECT.GET."+stream, inbox, req); err != nil {
		return nil, fmt.Errorf("get last messages: %w", err)
	}
	for {
		var m *nats.Msg
		select {
		case m = <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("get last messages of %d subjects: %w", len(subjs), ctx.Err())
		}
		switch st, desc := m.Header.Get("Status"), m.Header.Get("Description"); {
		case st == "204": // end of batch
			return out, nil
		case st == "404" && desc == "No Results":
			return out, nil
		case st == "503" && len(m.Data) == 0:
			return nil, fmt.Errorf("get last messages: %w", nats.ErrNoResponders)
		case st != "":
			return nil, fmt.Errorf("get last messages: %w", &StatusError{Status: st, Description: desc})
		}
		r, err := directMsg(m)
		if err != nil {
			return nil, fmt.Errorf("get last messages: %w", err)
		}
		out[r.Subject] = r
	}
}

// StatusError is a direct get answered with a status instead of messages:
// "408 Empty Request" from a server that does not know multi_last, for
// instance.
type StatusError struct {
	Status      string
	Description string
}

func (e *StatusError) Error() string { return "status " + e.Status + " " + e.Description }

// directMsg is a stored message as a direct get answers it: the stream's
// headers (subject, sequence, time) added to the message's own.
func directMsg(m *nats.Msg) (*jetstream.RawStreamMsg, error) {
	seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("bad sequence %q", m.Header.Get(jetstream.SequenceHeader))
	}
	t, _ := time.Parse(time.RFC3339Nano, m.Header.Get(jetstream.TimeStampHeaer))
	return &jetstream.RawStreamMsg{Subject: m.Header.Get(jetstream.SubjectHeader), Sequence: seq, Header: m.Header, Data: m.Data, Time: t}, nil
}
