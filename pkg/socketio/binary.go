package socketio

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
)

// Binary data in Socket.IO travels as attachments referenced by
// {"_placeholder":true,"num":N}. On NATS, Switchboard writes each attachment
// in place as {"_binary":"<standard base64>"}, so a service sees one JSON
// document. Reconstruct goes from the first form to the second (client →
// NATS), Deconstruct from the second to the first (NATS → client).

var (
	binaryKey      = []byte(`"_binary"`)
	placeholderKey = []byte(`"_placeholder"`)
)

// HasBinary reports whether data may hold {"_binary":…} values.
func HasBinary(data []byte) bool { return bytes.Contains(data, binaryKey) }

// Reconstruct replaces the placeholders in data with the attachments, each
// written as {"_binary":"<base64>"}. Every placeholder must name an
// existing attachment.
func Reconstruct(data json.RawMessage, parts [][]byte) (json.RawMessage, error) {
	if !bytes.Contains(data, placeholderKey) {
		return data, nil
	}
	return rewrite(data, func(obj []byte) ([]byte, bool, error) {
		if !bytes.Contains(obj, placeholderKey) {
			return nil, false, nil
		}
		var ph map[string]json.RawMessage
		if json.Unmarshal(obj, &ph) != nil || len(ph) != 2 || string(ph["_placeholder"]) != "true" {
			return nil, false, nil
		}
		n, err := strconv.Atoi(string(ph["num"]))
		if err != nil || n < 0 || n >= len(parts) {
			return nil, false, invalid("placeholder %s names no attachment", ph["num"])
		}
		return binaryJSON(parts[n]), true, nil
	})
}

func binaryJSON(b []byte) []byte {
	out := make([]byte, 0, base64.StdEncoding.EncodedLen(len(b))+14)
	out = append(out, `{"_binary":"`...)
	out = base64.StdEncoding.AppendEncode(out, b)
	return append(out, `"}`...)
}

// Binary returns the NATS form of binary data: {"_binary":"<base64>"}.
func Binary(b []byte) json.RawMessage { return binaryJSON(b) }

// Deconstruct replaces each {"_binary":"<base64>"} in data with a
// placeholder and returns the attachments in order.
func Deconstruct(data json.RawMessage) (json.RawMessage, [][]byte, error) {
	if !HasBinary(data) {
		return data, nil, nil
	}
	var parts [][]byte
	out, err := rewrite(data, func(obj []byte) ([]byte, bool, error) {
		if !bytes.Contains(obj, binaryKey) {
			return nil, false, nil
		}
		var b map[string]json.RawMessage
		if json.Unmarshal(obj, &b) != nil || len(b) != 1 {
			return nil, false, nil
		}
		var s string
		if json.Unmarshal(b["_binary"], &s) != nil {
			return nil, false, nil
		}
		raw, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, false, nil
		}
		parts = append(parts, raw)
		return fmt.Appendf(nil, `{"_placeholder":true,"num":%d}`, len(parts)-1), true, nil
	})
	return out, parts, err
}

// rewrite copies the JSON value data, offering every object to fn first;
// when fn replaces it, the replacement is written instead. Member order and
// everything else are kept byte for byte.
func rewrite(data []byte, fn func(obj []byte) ([]byte, bool, error)) ([]byte, error) {
	w := rewriter{in: data, fn: fn, out: make([]byte, 0, len(data))}
	if err := w.value(); err != nil {
		return nil, err
	}
	w.out = append(w.out, w.in[w.i:]...)
	return w.out, nil
}

type rewriter struct {
	in  []byte
	i   int
	out []byte
	fn  func([]byte) ([]byte, bool, error)
}

func (w *rewriter) ws() {
	for w.i < len(w.in) {
		switch w.in[w.i] {
		case ' ', '\t', '\r', '\n':
			w.out = append(w.out, w.in[w.i])
			w.i++
		default:
			return
		}
	}
}

func (w *rewriter) value() error {
	w.ws()
	if w.i >= len(w.in) {
		return invalid("truncated JSON")
	}
	switch w.in[w.i] {
	case '{':
		end, err := skip(w.in, w.i)
		if err != nil {
			return err
		}
		repl, ok, err := w.fn(w.in[w.i:end])
		if err != nil {
			return err
		}
		if ok {
			w.out = append(w.out, repl...)
			w.i = end
			return nil
		}
		return w.container('}', true)
	case '[':
		return w.container(']', false)
	}
	end, err := skip(w.in, w.i)
	if err != nil {
		return err
	}
	if end <= w.i {
		return invalid("unexpected %q in JSON", w.in[w.i])
	}
	w.out = append(w.out, w.in[w.i:end]...)
	w.i = end
	return nil
}

func (w *rewriter) container(closer byte, object bool) error {
	w.out = append(w.out, w.in[w.i])
	w.i++
	for {
		w.ws()
		if w.i >= len(w.in) {
			return invalid("truncated JSON")
		}
		if w.in[w.i] == closer {
			w.out = append(w.out, closer)
			w.i++
			return nil
		}
		if w.in[w.i] == ',' {
			w.out = append(w.out, ',')
			w.i++
			continue
		}
		if object {
			end, err := skip(w.in, w.i) // the key
			if err != nil {
				return err
			}
			if end <= w.i {
				return invalid("unexpected %q in JSON", w.in[w.i])
			}
			w.out = append(w.out, w.in[w.i:end]...)
			w.i = end
			w.ws()
			if w.i >= len(w.in) || w.in[w.i] != ':' {
				return invalid("expected ':'")
			}
			w.out = append(w.out, ':')
			w.i++
		}
		if err := w.value(); err != nil {
			return err
		}
	}
}

// skip returns the end of the JSON value starting at in[i].
func skip(in []byte, i int) (int, error) {
	depth := 0
	for j := i; j < len(in); j++ {
		switch c := in[j]; c {
		case '"':
			k := j + 1
			for ; k < len(in) && in[k] != '"'; k++ {
				if in[k] == '\\' {
					k++
				}
			}
			if k >= len(in) {
				return 0, invalid("unterminated string")
			}
			j = k
			if depth == 0 {
				return j + 1, nil
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 { // a scalar ends where its container does
				return j, nil
			}
			depth--
			if depth == 0 {
				return j + 1, nil
			}
			if depth < 0 {
				return 0, invalid("unbalanced JSON")
			}
		case ',', ':', ' ', '\t', '\r', '\n':
			if depth == 0 {
				return j, nil
			}
		}
	}
	if depth == 0 {
		return len(in), nil
	}
	return 0, invalid("truncated JSON")
}
