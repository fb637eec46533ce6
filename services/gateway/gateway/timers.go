package gateway

import "time"

// timer kinds run by the gateway's scheduler.
type timerKind uint8

const (
	timerPing timerKind = iota
	timerPong
	timerConnect
	timerAck
	timerExpiry
	timerUpgrade
	timerExpiring
)

type timerKey struct {
	e    *engine
	s    *socket
	kind timerKind
	id   uint64
}

func (g *Gateway) fire(k timerKey, _ time.Time) {
	switch k.kind {
	case timerPing:
		k.e.ping()
	case timerPong:
		k.e.log().Debug("ping timeout")
		k.e.close(closePingTimeout)
	case timerConnect:
		if !k.e.sio.hasSocket() {
			k.e.close(closeConnectTimeout)
		}
	case timerAck:
		k.s.expireAck(k.id)
	case timerExpiry:
		k.s.e.log().Debug("token expired", "socket", k.s.id)
		k.s.e.sio.kick(k.s)
	case timerUpgrade:
		k.e.upgradeTimedOut()
	case timerExpiring:
		k.s.tokenExpiring()
	}
}
