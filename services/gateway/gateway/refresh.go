package gateway

import (
	"encoding/json"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/socketio"
)

// A socket's token lives on past the handshake: token_expiring_lead before
// it expires the socket gets tokenExpiring, and the client may answer with
// refreshToken and a new token of the same user. With expire_sockets, a
// socket whose token expired expire_grace ago is ended (DISCONNECT, close).

// Messages of refreshToken's error acks and exceptions.
const (
	msgOtherUser       = "Token belongs to another user"
	msgRefreshDisabled = "Token refresh is not available"
	// Past maxConnectsPerMinute CONNECTs and refreshes of one engine.
	msgTooManyRefreshes = "Too many refresh attempts"
	// A valid token that expires before the socket's current one (an
	// old token sent again, or refreshes crossing) does not replace it.
	msgOlderToken = "Token expires before the current one"
)

// tokenState is what the socket's current token proved.
type tokenState struct {
	exp    time.Time // zero: does not expire
	claims string    // api.HeaderClaims value ("" when none)
}

func newTokenState(id api.VerifyReply) *tokenState {
	return &tokenState{exp: id.Expires, claims: string(id.Claims)}
}

// scheduleToken sets the socket's tokenExpiring and expiry timers for a
// token expiring at exp (replacing earlier ones); a token that does not
// expire has none.
func (g *Gateway) scheduleToken(s *socket, exp time.Time) {
	if exp.IsZero() {
		g.cancelToken(s)
		return
	}
	if g.cfg.TokenExpiringLead > 0 {
		g.sched.Set(timerKey{s: s, kind: timerExpiring}, expiringAt(time.Now(), exp, g.cfg.TokenExpiringLead))
	}
	if g.cfg.ExpireSockets {
		g.sched.Set(timerKey{s: s, kind: timerExpiry}, exp.Add(g.cfg.ExpireGrace))
	}
	if !s.isConnected() {
		// Removed meanwhile: its removal may have cancelled before the
		// timers were set.
		g.cancelToken(s)
	}
}

// expiringAt is when a socket whose token expires at exp gets
// tokenExpiring: lead before exp, but not before half the token's remaining
// life, so that tokens shorter than the lead do not make every refresh
// call for another at once.
func expiringAt(now, exp time.Time, lead time.Duration) time.Time {
	return later(exp.Add(-lead), now.Add(exp.Sub(now)/2))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (g *Gateway) cancelToken(s *socket) {
	g.sched.Cancel(timerKey{s: s, kind: timerExpiring})
	g.sched.Cancel(timerKey{s: s, kind: timerExpiry})
}

// tokenExpiring tells the client its token expires soon.
func (s *socket) tokenExpiring() {
	// Set only while the socket's token has an expiry.
	ts := s.token.Load()
	if ts == nil || !s.isConnected() {
		return
	}
	s.emit(api.EventTokenExpiring, mustJSON(map[string]int64{"exp": ts.exp.Unix()}))
}

// onRefresh handles refreshToken: [{"token": "..."}], with or without an
// ack. The token is verified off the input path; the socket keeps its
// identity whatever the outcome.
func (s *socket) onRefresh(p socketio.Packet, args []json.RawMessage) {
	g := s.e.g
	fail := func(msg string) { s.refuse(p, msg) }
	if g.opts.noAuth {
		fail(msgRefreshDisabled)
		return
	}
	var body struct {
		Token json.RawMessage `json:"token"`
	}
	if len(args) == 0 || json.Unmarshal(args[0], &body) != nil || len(body.Token) == 0 || string(body.Token) == "null" {
		fail(msgNoToken)
		return
	}
	// Each refresh costs a verification, like a CONNECT: they share the
	// engine's bound.
	if !s.e.sio.countConnect(time.Now()) {
		fail(msgTooManyRefreshes)
		return
	}
	// A token a forwarding gateway verified comes as its verdict, which
	// is only at hand while this input is handled.
	v, verified := s.e.verdictFor(body.Token)
	if !s.takeRequest() {
		fail(msgTooManyRequests)
		return
	}
	go func() {
		defer s.doneRequest()
		if !verified {
			v = g.verify(g.ctx, credentials{authToken: body.Token})
		}
		switch {
		case v.Msg != "":
			fail(v.Msg)
		case v.ID.UserID != s.conn.UserID:
			s.e.log().Info("refresh with another user's token refused", "socket", s.id)
			fail(msgOtherUser)
		case !s.refreshed(*v.ID):
			fail(msgOlderToken)
		default:
			if p.HasID {
				ok := refreshOK{Status: "ok"}
				if !v.ID.Expires.IsZero() {
					ok.Exp = v.ID.Expires.Unix()
				}
				s.sendAck(p.ID, socketio.ArrayPayload(mustJSON(ok)))
			}
		}
	}()
}

// refreshOK is refreshToken's ack on success.
type refreshOK struct {
	Status string `json:"status"`
	Exp    int64  `json:"exp"`
}

// refreshed makes id the socket's token, unless it expires before the
// current one.
func (s *socket) refreshed(id api.VerifyReply) bool {
	next := newTokenState(id)
	for {
		cur := s.token.Load()
		if cur != nil && next.exp.Before(cur.exp) {
			return false
		}
		if s.token.CompareAndSwap(cur, next) {
			break
		}
	}
	if !s.isConnected() {
		return true // closed meanwhile: nothing to schedule
	}
	s.e.g.scheduleToken(s, id.Expires)
	s.e.g.metrics.refreshes.Inc()
	s.e.log().Debug("token refreshed", "socket", s.id, "exp", id.Expires)
	return true
}
