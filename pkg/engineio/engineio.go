// Package engineio encodes and decodes Engine.IO protocol v4 packets and
// HTTP long-polling payloads.
package engineio

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
)

// Type is an Engine.IO packet type.
type Type byte

// Packet types.
const (
	Open    Type = 0
	Close   Type = 1
	Ping    Type = 2
	Pong    Type = 3
	Message Type = 4
	Upgrade Type = 5
	Noop    Type = 6
)

// Separator splits packets in a long-polling payload.
const Separator = '\x1e'

// ErrInvalid is wrapped by every decoding error.
var ErrInvalid = errors.New("invalid engine.io packet")

// Packet is one Engine.IO packet. Binary is true for a binary message, whose
// Data is raw bytes.
type Packet struct {
	Type   Type
	Data   []byte
	Binary bool
	// text is Text() computed once (see Shared), or nil.
	text []byte
}

func (t Type) String() string {
	switch t {
	case Open:
		return "open"
	case Close:
		return "close"
	case Ping:
		return "ping"
	case Pong:
		return "pong"
	case Message:
		return "message"
	case Upgrade:
		return "upgrade"
	case Noop:
		return "noop"
	}
	return fmt.Sprintf("type(%d)", byte(t))
}

// DecodeFrame decodes one WebSocket frame. A binary frame is a binary
// message; a text frame is a type digit followed by its data. The returned
// packet aliases frame.
func DecodeFrame(frame []byte, binary bool) (Packet, error) {
	if binary {
		return Packet{Type: Message, Data: frame, Binary: true}, nil
	}
	return decodeText(frame)
}

func decodeText(b []byte) (Packet, error) {
	if len(b) == 0 {
		return Packet{}, fmt.Errorf("%w: empty", ErrInvalid)
	}
	c := b[0]
	if c < '0' || c > '6' {
		return Packet{}, fmt.Errorf("%w: unknown type %q", ErrInvalid, c)
	}
	return Packet{Type: Type(c - '0'), Data: b[1:]}, nil
}

// AppendText appends the text form of p (as sent in a WebSocket text frame or
// a polling payload). Binary packets are written as "b" + base64.
func (p Packet) AppendText(dst []byte) []byte {
	if p.Binary {
		dst = append(dst, 'b')
		return base64.StdEncoding.AppendEncode(dst, p.Data)
	}
	dst = append(dst, '0'+byte(p.Type))
	return append(dst, p.Data...)
}

// Text returns the text form of a non-binary packet. The text of a packet
// from Shared is shared: the caller must not modify it.
func (p Packet) Text() []byte {
	if p.text != nil {
		return p.text
	}
	return p.AppendText(make([]byte, 0, len(p.Data)+1))
}

// Shared returns p with its text form computed once, for a packet sent to
// many connections: Text then returns that one encoding to every caller.
func (p Packet) Shared() Packet {
	if !p.Binary {
		p.text = p.Text()
	}
	return p
}

// MaxPayloadPackets bounds the packets of one long-polling payload.
const MaxPayloadPackets = 4096

// DecodePayload splits a long-polling payload into packets. Binary packets
// ("b" + base64) are decoded to raw bytes. A payload of more than
// MaxPayloadPackets packets is refused before anything is decoded.
func DecodePayload(body []byte) ([]Packet, error) {
	if len(body) == 0 {
		return nil, fmt.Errorf("%w: empty payload", ErrInvalid)
	}
	n := bytes.Count(body, []byte{Separator}) + 1
	if n > MaxPayloadPackets {
		return nil, fmt.Errorf("%w: %d packets in one payload, at most %d", ErrInvalid, n, MaxPayloadPackets)
	}
	out := make([]Packet, 0, n)
	for part := range bytes.SplitSeq(body, []byte{Separator}) {
		if len(part) > 0 && part[0] == 'b' {
			raw, err := base64.StdEncoding.AppendDecode(nil, part[1:])
			if err != nil {
				return nil, fmt.Errorf("%w: bad base64", ErrInvalid)
			}
			out = append(out, Packet{Type: Message, Data: raw, Binary: true})
			continue
		}
		p, err := decodeText(part)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// EncodePayload joins packets into a long-polling payload.
func EncodePayload(ps []Packet) []byte {
	size := 0
	for _, p := range ps {
		size += len(p.Data)*4/3 + 4
	}
	out := make([]byte, 0, size)
	for i, p := range ps {
		if i > 0 {
			out = append(out, Separator)
		}
		out = p.AppendText(out)
	}
	return out
}
