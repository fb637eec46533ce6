package gateway

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/gorilla/websocket"
	"github.com/olahol/melody"
)

// Engine.IO handshake errors (as the reference server sends them).
var (
	errTransportUnknown = engineError{400, 0, "Transport unknown"}
	errSessionUnknown   = engineError{400, 1, "Session ID unknown"}
	errBadMethod        = engineError{400, 2, "Bad handshake method"}
	errBadRequest       = engineError{400, 3, "Bad request"}
	errForbidden        = engineError{403, 4, "Forbidden"}
	errBadVersion       = engineError{400, 5, "Unsupported protocol version"}
	// Admission refusals (not in the reference server).
	errBusy          = engineError{503, 3, "Server busy"}
	errTooManyFromIP = engineError{429, 3, "Too many connections from this address"}
	errHandshakeRate = engineError{429, 3, "Too many handshakes from this address"}
)

type engineError struct {
	status  int
	code    int
	message string
}

func (e engineError) json() []byte {
	b, _ := json.Marshal(map[string]any{"code": e.code, "message": e.message})
	return b
}

func (e engineError) write(w http.ResponseWriter) {
	writeReply(w, engineErrReply(e))
}

func writeReply(w http.ResponseWriter, r httpReply) {
	w.Header().Set("Content-Type", r.contentType)
	w.WriteHeader(r.status)
	_, _ = w.Write(r.body)
}

// serveEngine is the Engine.IO endpoint: WebSocket handshakes and upgrades,
// and long-polling requests, answered here or forwarded over NATS to the
// gateway that holds the session.
func (g *Gateway) serveEngine(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != g.cfg.Path {
		http.NotFound(w, r)
		return
	}
	if !g.origins.allow(r) {
		errForbidden.write(w)
		return
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Add("Vary", "Origin")
	}
	if r.Method == http.MethodOptions {
		h := w.Header()
		h.Set("Access-Control-Allow-Methods", "GET, POST")
		if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
			h.Set("Access-Control-Allow-Headers", req)
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	q := r.URL.Query()
	sid := q.Get("sid")
	switch {
	case q.Get("EIO") != "4":
		errBadVersion.write(w)
	case q.Get("transport") == "websocket":
		if r.Method != http.MethodGet {
			errBadMethod.write(w)
			return
		}
		if sid == "" {
			if e := g.admitEngine(w, r); e != nil {
				g.acceptWebSocket(w, r, e, false)
			}
			return
		}
		e := g.hub.engine(sid)
		if e == nil {
			g.relayUpgrade(w, r, sid) // held by another gateway, if any
			return
		}
		if !e.startUpgrade() {
			// Already upgraded, or upgrading: as the reference server does,
			// the WebSocket is accepted and closed at once.
			g.acceptAndClose(w, r)
			return
		}
		g.acceptWebSocket(w, r, e, true)
	case q.Get("transport") == "polling":
		switch {
		case sid == "" && r.Method == http.MethodGet:
			e := g.admitEngine(w, r)
			if e == nil {
				return
			}
			e.attach(newPollTransport(e, g.cfg.SendQueue, g.cfg.SendQueueBytes))
			if err := g.hub.addForward(e); err != nil {
				g.log.Warn("engine forwarding", "err", err)
			}
			writeReply(w, e.servePoll(r.Context(), http.MethodGet, nil, nil))
		case sid == "":
			errBadMethod.write(w)
		case r.Method != http.MethodGet && r.Method != http.MethodPost:
			errBadMethod.write(w)
		default:
			rc := http.NewResponseController(w)
			if r.Method == http.MethodPost {
				_ = rc.SetReadDeadline(time.Now().Add(g.cfg.BodyTimeout))
			}
			body, err := readBody(r, g.cfg.MaxPayload)
			if r.Method == http.MethodPost {
				_ = rc.SetReadDeadline(time.Time{})
			}
			if err != nil { // the connection's input is unusable after this
				w.Header().Set("Connection", "close")
				errBadRequest.write(w)
				return
			}
			if e := g.hub.engine(sid); e != nil {
				writeReply(w, e.servePoll(r.Context(), r.Method, body, nil))
				return
			}
			writeReply(w, g.forward(r.Context(), sid, r.Method, body))
		}
	default:
		errTransportUnknown.write(w)
	}
}

// acceptAndClose completes a WebSocket handshake and closes the connection
// at once (normal closure).
func (g *Gateway) acceptAndClose(w http.ResponseWriter, r *http.Request) {
	c, err := g.m.Upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered the request
	}
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	_ = c.Close()
}

func (g *Gateway) acceptWebSocket(w http.ResponseWriter, r *http.Request, e *engine, probe bool) {
	keys := map[string]any{engineKey: e, queuedKey: g.newQueued()}
	if probe {
		keys[probeKey] = true
	}
	if err := g.m.HandleRequestWithKeys(w, r, keys); err != nil {
		g.log.Debug("websocket upgrade", "err", err)
		if probe {
			e.abortUpgrade(nil)
		} else if !e.attached() {
			g.adm.release(e.ip) // never became an engine connection
		}
	}
}

// wsPingPeriod is how often melody pings a WebSocket (it closes one that
// does not answer within a minute more).
const wsPingPeriod = 5 * time.Minute

const (
	engineKey = "engine"
	probeKey  = "probe"
	queuedKey = "queued" // *queuedBytes of the session
)

// onWSSent uncounts a frame melody wrote.
func (g *Gateway) onWSSent(s *melody.Session, b []byte) {
	if q, ok := s.Keys[queuedKey].(*queuedBytes); ok {
		q.sent(len(b))
	}
}

func (g *Gateway) newQueued() *queuedBytes { return &queuedBytes{limit: int64(g.cfg.SendQueueBytes)} }

func engineOf(s *melody.Session) *engine { return s.Keys[engineKey].(*engine) }

func (g *Gateway) onWSMessage(s *melody.Session, b []byte, binary bool) {
	if p, ok := relayOf(s); ok {
		p.toHolder(b, binary)
		return
	}
	engineOf(s).onWSFrame(s, b, binary)
}

func (g *Gateway) onWSDisconnect(s *melody.Session) {
	if p, ok := relayOf(s); ok {
		p.toHolderClose(1000)
		return
	}
	engineOf(s).onWSClosed(s)
}

func (g *Gateway) onWSConnect(s *melody.Session) {
	if p, ok := relayOf(s); ok {
		p.attach(s)
		return
	}
	e := engineOf(s)
	tr := &wsTransport{s: s, broken: &e.broken, queued: s.Keys[queuedKey].(*queuedBytes), onSlow: e.slow}
	if _, probe := s.Keys[probeKey]; probe {
		e.probeConnected(tr)
		return
	}
	e.attach(tr)
}

func (g *Gateway) onWSError(s *melody.Session, err error) {
	if errors.Is(err, melody.ErrMessageBufferFull) {
		// The bounded send queue overflowed: the client is too slow. Close the
		// connection rather than drop messages while it stays open.
		if p, ok := relayOf(s); ok {
			p.slow()
			return
		}
		engineOf(s).slow()
		return
	}
	if errors.Is(err, websocket.ErrReadLimit) {
		// The close 1009 is sent. Read and drop the rest of the oversized
		// frame (bounded) so that closing does not reset the connection
		// under the client before it reads the close code.
		nc := s.WebsocketConnection().UnderlyingConn()
		_ = nc.SetReadDeadline(time.Now().Add(time.Second))
		_, _ = io.CopyN(io.Discard, nc, 2*int64(g.cfg.MaxPayload)+65536)
		return
	}
	if errors.Is(err, melody.ErrWriteClosed) || errors.Is(err, melody.ErrSessionClosed) {
		return
	}
	g.log.Debug("websocket", "err", err)
}
