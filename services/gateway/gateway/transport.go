package gateway

import (
	"sync/atomic"

	"github.com/olahol/melody"

	"github.com/switchboard-rt/switchboard/pkg/engineio"
)

// transport is what an engine writes Engine.IO packets to.
// Packets passed in one call are sent together and in order.
type transport interface {
	send(ps ...engineio.Packet)
	close(code int, reason string)
}

var (
	_ transport = (*wsTransport)(nil)
	_ transport = (*pollTransport)(nil)
)

// wsTransport writes to a melody session. Once its bounded queue overflowed
// (broken), nothing more is written: the connection is being closed, and a
// later message must not arrive after a lost one.
type wsTransport struct {
	s      *melody.Session
	broken *atomic.Bool
	queued *queuedBytes
	onSlow func()
}

func (t *wsTransport) send(ps ...engineio.Packet) {
	for _, p := range ps {
		if t.broken.Load() {
			return
		}
		data := p.Data
		if !p.Binary {
			data = p.Text()
		}
		if !t.queued.add(len(data)) {
			t.onSlow() // sets broken
			return
		}
		if p.Binary {
			_ = t.s.WriteBinary(data)
		} else {
			_ = t.s.Write(data)
		}
	}
}

// queuedBytes counts the bytes handed to a WebSocket session's send queue
// and not yet written (melody reports each write).
type queuedBytes struct {
	n     atomic.Int64
	limit int64
}

// add counts n more bytes; false when that passes the limit.
func (q *queuedBytes) add(n int) bool { return q.n.Add(int64(n)) <= q.limit }

func (q *queuedBytes) sent(n int) { q.n.Add(-int64(n)) }

func (t *wsTransport) close(code int, reason string) {
	if code == closeCodeSlow {
		// The send queue is full, so a close frame cannot be queued: cut the
		// connection.
		_ = t.s.WebsocketConnection().Close()
		return
	}
	_ = t.s.CloseWithMsg(melody.FormatCloseMessage(code, reason))
}

const closeCodeSlow = 1008
