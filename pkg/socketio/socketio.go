// Package socketio encodes and decodes Socket.IO protocol v5 packets.
package socketio

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Type is a Socket.IO packet type.
type Type byte

// Packet types.
const (
	Connect      Type = 0
	Disconnect   Type = 1
	Event        Type = 2
	Ack          Type = 3
	ConnectError Type = 4
	BinaryEvent  Type = 5
	BinaryAck    Type = 6
)

// Limits enforced by Decode.
const (
	MaxNamespaceLen = 256
	MaxAttachments  = 64
	maxIDDigits     = 15 // stays below JavaScript's Number.MAX_SAFE_INTEGER
)

// ErrInvalid is wrapped by every decoding error.
var ErrInvalid = errors.New("invalid socket.io packet")

// Packet is one Socket.IO packet. Data is the raw JSON payload (nil when the
// packet has none). HasID tells whether ID is set.
type Packet struct {
	Type        Type
	Namespace   string
	HasID       bool
	ID          uint64
	Attachments int
	Data        json.RawMessage
}

// IsBinary reports whether the packet is followed by binary attachments.
func (t Type) IsBinary() bool { return t == BinaryEvent || t == BinaryAck }

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

// Decode parses the text form of a packet and checks that its payload fits
// its type, as the reference parser does. Text that is not valid UTF-8 is
// rejected, as a WebSocket text frame would be.
func Decode(b []byte) (Packet, error) {
	if len(b) == 0 {
		return Packet{}, invalid("empty")
	}
	if !utf8.Valid(b) {
		return Packet{}, invalid("not UTF-8")
	}
	if b[0] < '0' || b[0] > '6' {
		return Packet{}, invalid("unknown type %q", b[0])
	}
	p := Packet{Type: Type(b[0] - '0'), Namespace: "/"}
	i := 1
	if p.Type.IsBinary() {
		j := i
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			j++
		}
		if j == i || j >= len(b) || b[j] != '-' || j-i > 2 {
			return Packet{}, invalid("bad attachment count")
		}
		n, _ := strconv.Atoi(string(b[i:j]))
		if n > MaxAttachments {
			return Packet{}, invalid("too many attachments")
		}
		p.Attachments = n
		i = j + 1
	}
	if i < len(b) && b[i] == '/' {
		j := bytes.IndexByte(b[i:], ',')
		end := len(b)
		if j >= 0 {
			end = i + j
		}
		if end-i > MaxNamespaceLen {
			return Packet{}, invalid("namespace too long")
		}
		p.Namespace = string(b[i:end])
		i = end
		if j >= 0 {
			i++
		}
	}
	j := i
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		j++
	}
	if j > i {
		if j-i > maxIDDigits {
			return Packet{}, invalid("ack id too long")
		}
		p.ID, _ = strconv.ParseUint(string(b[i:j]), 10, 64)
		p.HasID = true
		i = j
	}
	if i < len(b) {
		p.Data = json.RawMessage(b[i:])
		if !json.Valid(p.Data) {
			return Packet{}, invalid("payload is not JSON")
		}
	}
	if err := p.checkPayload(); err != nil {
		return Packet{}, err
	}
	return p, nil
}

func firstByte(d json.RawMessage) byte {
	for _, c := range d {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return c
	}
	return 0
}

func (p Packet) checkPayload() error {
	f := firstByte(p.Data)
	switch p.Type {
	case Connect:
		if p.Data != nil && f != '{' {
			return invalid("CONNECT payload must be an object")
		}
	case Disconnect:
		if p.Data != nil {
			return invalid("DISCONNECT takes no payload")
		}
	case ConnectError:
		if f != '{' && f != '"' {
			return invalid("CONNECT_ERROR payload must be an object or a string")
		}
	case Event, BinaryEvent:
		if f != '[' {
			return invalid("EVENT payload must be an array")
		}
		// Data is valid JSON, so an array whose first element starts with a
		// quote has a string for a name: no need to unmarshal it here.
		switch firstByte(p.Data[bytes.IndexByte(p.Data, '[')+1:]) {
		case '"':
		case ']':
			return invalid("EVENT without a name")
		default:
			return invalid("event name must be a string")
		}
	case Ack, BinaryAck:
		if f != '[' {
			return invalid("ACK payload must be an array")
		}
		if !p.HasID {
			return invalid("ACK without id")
		}
	}
	if (p.Type == Connect || p.Type == Disconnect || p.Type == ConnectError) && p.HasID {
		return invalid("unexpected ack id")
	}
	return nil
}

// Args splits an EVENT or ACK payload into its elements.
func (p Packet) Args() ([]json.RawMessage, error) {
	var args []json.RawMessage
	if err := json.Unmarshal(p.Data, &args); err != nil {
		return nil, invalid("payload is not an array")
	}
	return args, nil
}

// EventName returns the event name of an EVENT packet and its arguments.
func (p Packet) EventName() (string, error) {
	name, _, err := p.Event()
	return name, err
}

// Event returns the event name and the arguments after it.
func (p Packet) Event() (string, []json.RawMessage, error) {
	args, err := p.Args()
	if err != nil {
		return "", nil, err
	}
	if len(args) == 0 {
		return "", nil, invalid("EVENT without a name")
	}
	var name string
	if firstByte(args[0]) != '"' || json.Unmarshal(args[0], &name) != nil {
		return "", nil, invalid("event name must be a string")
	}
	return name, args[1:], nil
}

// Append appends the text form of p to dst.
func (p Packet) Append(dst []byte) []byte {
	dst = append(dst, '0'+byte(p.Type))
	if p.Type.IsBinary() {
		dst = strconv.AppendInt(dst, int64(p.Attachments), 10)
		dst = append(dst, '-')
	}
	if p.Namespace != "" && p.Namespace != "/" {
		dst = append(dst, p.Namespace...)
		dst = append(dst, ',')
	}
	if p.HasID {
		dst = strconv.AppendUint(dst, p.ID, 10)
	}
	return append(dst, p.Data...)
}

// Encode returns the text form of p.
func (p Packet) Encode() []byte {
	return p.Append(make([]byte, 0, len(p.Data)+len(p.Namespace)+24))
}

// EventPayload builds the JSON array [name, args...] of an EVENT packet.
func EventPayload(name string, args ...json.RawMessage) json.RawMessage {
	n, _ := json.Marshal(name)
	size := len(n) + 2
	for _, a := range args {
		size += len(a) + 1
	}
	out := make([]byte, 0, size)
	out = append(out, '[')
	out = append(out, n...)
	for _, a := range args {
		out = append(out, ',')
		out = append(out, a...)
	}
	return append(out, ']')
}

// ArrayPayload builds a JSON array from raw elements (ACK payloads).
func ArrayPayload(args ...json.RawMessage) json.RawMessage {
	out := []byte{'['}
	for i, a := range args {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, a...)
	}
	return append(out, ']')
}

// reserved are event names a Socket.IO client treats specially; they can be
// neither sent by clients nor delivered to them.
var reserved = map[string]bool{
	"connect": true, "connect_error": true, "disconnect": true, "disconnecting": true,
	"newListener": true, "removeListener": true,
}

// Reserved reports whether name is a reserved event name.
func Reserved(name string) bool { return reserved[name] }
