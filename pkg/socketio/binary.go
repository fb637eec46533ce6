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

// MaxDepth is how deeply the JSON of an event with binary attachments may
// nest; deeper documents are refused.
const MaxDepth = 128

// HasBinary reports whether data may hold {"_binary":…} values.
func HasBinary(data []byte) bool { return bytes.Contains(data, binaryKey) }

// Reconstruct replaces the placeholders in data with the attachments, each
// written as {"_binary":"<base64>"}. Every placeholder must name an
// existing attachment, and no attachment may be named twice (the output is
// thus at most the input plus the attachments in base64).
func Reconstruct(data json.RawMessage, parts [][]byte) (json.RawMessage, error) {
	if !bytes.Contains(data, placeholderKey) {
		return data, nil
	}
	used := make([]bool, len(parts))
	return rewrite(data, func(in []byte, i int) (int, []byte, error) {
		end, num, ok := placeholderAt(in, i)
		if !ok {
			return 0, nil, nil
		}
		n, err := strconv.Atoi(string(num))
		if err != nil || n < 0 || n >= len(parts) {
			return 0, nil, invalid("placeholder %s names no attachment", num)
		}
		if used[n] {
			return 0, nil, invalid("attachment %d is named by more than one placeholder", n)
		}
		used[n] = true
		return end, binaryJSON(parts[n]), nil
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
	out, err := rewrite(data, func(in []byte, i int) (int, []byte, error) {
		end, raw, ok := binaryAt(in, i)
		if !ok {
			return 0, nil, nil
		}
		parts = append(parts, raw)
		return end, fmt.Appendf(nil, `{"_placeholder":true,"num":%d}`, len(parts)-1), nil
	})
	return out, parts, err
}

// A matcher looks at the object starting at in[i] ('{'). When the rewrite
// replaces it, it returns the object's end (> i) and the replacement;
// otherwise end 0. It reads only what it accepts, plus a few bytes, so the
// whole walk stays linear in the input.
type matcher func(in []byte, i int) (end int, repl []byte, err error)

// objectScanner reads the members of a small flat object token by token.
type objectScanner struct {
	in []byte
	i  int
}

func (s *objectScanner) ws() {
	for s.i < len(s.in) && (s.in[s.i] == ' ' || s.in[s.i] == '\t' || s.in[s.i] == '\r' || s.in[s.i] == '\n') {
		s.i++
	}
}

// byte consumes c (after white space).
func (s *objectScanner) byte(c byte) bool {
	s.ws()
	if s.i < len(s.in) && s.in[s.i] == c {
		s.i++
		return true
	}
	return false
}

// key reads a member name without escapes followed by ':'.
func (s *objectScanner) key() (string, bool) {
	if !s.byte('"') {
		return "", false
	}
	start := s.i
	for s.i < len(s.in) && s.in[s.i] != '"' && s.in[s.i] != '\\' && s.i-start < 32 {
		s.i++
	}
	if s.i >= len(s.in) || s.in[s.i] != '"' {
		return "", false
	}
	k := string(s.in[start:s.i])
	s.i++
	return k, s.byte(':')
}

// scalar reads a short literal, number or escape-free string.
func (s *objectScanner) scalar() ([]byte, bool) {
	s.ws()
	start := s.i
	if s.i < len(s.in) && s.in[s.i] == '"' {
		s.i++
		for s.i < len(s.in) && s.in[s.i] != '"' && s.in[s.i] != '\\' && s.i-start < 32 {
			s.i++
		}
		if s.i >= len(s.in) || s.in[s.i] != '"' {
			return nil, false
		}
		s.i++
		return s.in[start:s.i], true
	}
	for s.i < len(s.in) && s.i-start < 32 {
		c := s.in[s.i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '+' || c == '.') {
			break
		}
		s.i++
	}
	return s.in[start:s.i], s.i > start
}

// placeholderAt matches {"_placeholder":true,"num":<scalar>} (members in
// either order) at in[i] and returns its end and the raw num.
func placeholderAt(in []byte, i int) (end int, num []byte, ok bool) {
	s := objectScanner{in: in, i: i + 1}
	var seenPH, seenNum bool
	for n := 0; n < 2; n++ {
		if n == 1 && !s.byte(',') {
			return 0, nil, false
		}
		k, ok := s.key()
		if !ok {
			return 0, nil, false
		}
		v, ok := s.scalar()
		if !ok {
			return 0, nil, false
		}
		switch {
		case k == "_placeholder" && !seenPH && string(v) == "true":
			seenPH = true
		case k == "num" && !seenNum:
			seenNum, num = true, v
		default:
			return 0, nil, false
		}
	}
	if !s.byte('}') {
		return 0, nil, false
	}
	return s.i, num, true
}

// binaryAt matches {"_binary":"<standard base64>"} at in[i] and returns its
// end and the decoded bytes.
func binaryAt(in []byte, i int) (end int, raw []byte, ok bool) {
	s := objectScanner{in: in, i: i + 1}
	if k, ok := s.key(); !ok || k != "_binary" {
		return 0, nil, false
	}
	s.ws()
	if s.i >= len(in) || in[s.i] != '"' {
		return 0, nil, false
	}
	strEnd, err := skip(in, s.i)
	if err != nil {
		return 0, nil, false
	}
	str := in[s.i+1 : strEnd-1]
	if bytes.IndexByte(str, '\\') >= 0 {
		var u string
		if json.Unmarshal(in[s.i:strEnd], &u) != nil {
			return 0, nil, false
		}
		str = []byte(u)
	}
	s.i = strEnd
	if !s.byte('}') {
		return 0, nil, false
	}
	raw = make([]byte, base64.StdEncoding.DecodedLen(len(str)))
	n, err := base64.StdEncoding.Decode(raw, str)
	if err != nil {
		return 0, nil, false
	}
	return s.i, raw[:n], true
}

// rewrite copies the JSON value data, offering every object to match first;
// when it matches, the replacement is written instead. Member order and
// everything else are kept byte for byte. The walk is linear; documents
// nested deeper than MaxDepth are refused.
func rewrite(data []byte, match matcher) ([]byte, error) {
	w := rewriter{in: data, match: match, out: make([]byte, 0, len(data))}
	if err := w.value(); err != nil {
		return nil, err
	}
	w.out = append(w.out, w.in[w.i:]...)
	return w.out, nil
}

type rewriter struct {
	in    []byte
	i     int
	out   []byte
	match matcher
	depth int
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
		end, repl, err := w.match(w.in, w.i)
		if err != nil {
			return err
		}
		if end > w.i {
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
	if w.depth++; w.depth > MaxDepth {
		return invalid("JSON nested deeper than %d", MaxDepth)
	}
	defer func() { w.depth-- }()
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
