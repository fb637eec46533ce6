package socketio

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestReconstructDeconstruct(t *testing.T) {
	cases := []struct {
		name        string
		placeholder string
		parts       [][]byte
		nats        string
	}{
		{"one", `["upload",{"_placeholder":true,"num":0}]`, [][]byte{{1, 2, 3}}, `["upload",{"_binary":"AQID"}]`},
		{"nested keeps order", `[{"z":1,"file":{"_placeholder":true,"num":1},"a":[{"_placeholder":true,"num":0}]}]`, [][]byte{{0}, {255}}, `[{"z":1,"file":{"_binary":"/w=="},"a":[{"_binary":"AA=="}]}]`},
		{"spaces kept", `[ {"x" : "y"} , 2 ]`, nil, `[ {"x" : "y"} , 2 ]`},
		{"string mentioning keys", `["{\"_placeholder\":true}",{"_placeholder":true,"num":0}]`, [][]byte{{9}}, `["{\"_placeholder\":true}",{"_binary":"CQ=="}]`},
		{"empty attachment", `[{"_placeholder":true,"num":0}]`, [][]byte{{}}, `[{"_binary":""}]`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Reconstruct(json.RawMessage(tc.placeholder), tc.parts)
			if err != nil || string(got) != tc.nats {
				t.Fatalf("Reconstruct = %s, %v; want %s", got, err, tc.nats)
			}
			back, parts, err := Deconstruct(got)
			if err != nil {
				t.Fatal(err)
			}
			if len(tc.parts) == 0 {
				if string(back) != tc.placeholder {
					t.Fatalf("Deconstruct = %s", back)
				}
				return
			}
			// Attachments come back in document order.
			again, err := Reconstruct(back, parts)
			if err != nil || string(again) != tc.nats {
				t.Fatalf("round trip %s, %v", again, err)
			}
		})
	}
}

func TestReconstructErrors(t *testing.T) {
	for _, in := range []string{`[{"_placeholder":true,"num":1}]`, `[{"_placeholder":true,"num":-1}]`, `[{"_placeholder":true,"num":"0"}]`} {
		if _, err := Reconstruct(json.RawMessage(in), [][]byte{{1}}); err == nil {
			t.Errorf("%s: want error", in)
		}
	}
	// Lookalikes are left alone.
	for _, in := range []string{`[{"_placeholder":false,"num":0}]`, `[{"_placeholder":true,"num":0,"x":1}]`} {
		got, err := Reconstruct(json.RawMessage(in), [][]byte{{1}})
		if err != nil || string(got) != in {
			t.Errorf("%s: got %s, %v", in, got, err)
		}
	}
}

func TestDeconstructLeavesLookalikes(t *testing.T) {
	for _, in := range []string{`[{"_binary":1}]`, `[{"_binary":"***"}]`, `[{"_binary":"AA==","x":1}]`} {
		got, parts, err := Deconstruct(json.RawMessage(in))
		if err != nil || string(got) != in || len(parts) != 0 {
			t.Errorf("%s: got %s %v %v", in, got, parts, err)
		}
	}
	got, parts, _ := Deconstruct(json.RawMessage(`["a",{"_binary":"AQ=="},{"_binary":"Ag=="}]`))
	if string(got) != `["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]` || !reflect.DeepEqual(parts, [][]byte{{1}, {2}}) {
		t.Fatalf("got %s %v", got, parts)
	}
}

// FuzzBinary: the JSON rewriter behind Reconstruct and Deconstruct never
// panics, keeps any valid document byte for byte when nothing is replaced,
// and a deconstructed document reconstructs into valid JSON with every
// attachment back in place.
func FuzzBinary(f *testing.F) {
	for _, s := range []string{
		`["a",{"_binary":"AQID"}]`,
		`[{"z":1,"f":{"_binary":"/w=="},"a":[{"_binary":""}]}]`,
		`["{\"_binary\":\"x\"}",{"_placeholder":true,"num":0}]`,
		`[ {"x" : "y"} , 2 , null, true, -1.5e3 ]`,
		`{"_binary":"AR=="}`,
		`[{"_binary":1},{"_binary":"***"}]`,
		`"\u00e9\\\""`,
		`[[[[{}]]]]`,
		`[{"_placeholder":true,"num":0},{"_placeholder":true,"num":0}]`,
		`[{"num":0 , "_placeholder" : true}]`,
		`[{"_binary":"A\/8="}]`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		data := json.RawMessage(s)
		// Bounded output: each attachment is written at most once; bounded
		// time: the walk is linear (a generous bound for any fuzz input).
		parts := [][]byte{make([]byte, 1000), make([]byte, 1000)}
		start := time.Now()
		bounded, err := Reconstruct(data, parts)
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Reconstruct of %d bytes took %s", len(data), d)
		}
		if err == nil {
			if limit := len(data) + 2*(base64.StdEncoding.EncodedLen(1000)+14); len(bounded) > limit {
				t.Fatalf("Reconstruct(%q) wrote %d bytes, bound %d", s, len(bounded), limit)
			}
		}
		if !json.Valid(data) {
			_, _, _ = Deconstruct(data) // must not panic
			_, _ = Reconstruct(data, [][]byte{{1}})
			return
		}
		same, err := rewrite(data, func([]byte, int) (int, []byte, error) { return 0, nil, nil })
		if err != nil || string(same) != s {
			t.Fatalf("identity rewrite of %q = %q, %v", s, same, err)
		}
		out, parts, err := Deconstruct(data)
		if err != nil {
			t.Fatalf("Deconstruct(%q): %v", s, err)
		}
		if !json.Valid(out) {
			t.Fatalf("Deconstruct(%q) = %q: not JSON", s, out)
		}
		if bytes.Contains(data, placeholderKey) {
			return // placeholders of its own would need attachments
		}
		back, err := Reconstruct(out, parts)
		if err != nil || !json.Valid(back) {
			t.Fatalf("Reconstruct(%q) = %q, %v", out, back, err)
		}
		if len(parts) > 0 && HasBinary(back) == false {
			t.Fatalf("attachments of %q lost: %q", s, back)
		}
	})
}

// An attachment named by many placeholders would be copied once per
// placeholder (a few KB of input growing to gigabytes): refused.
func TestReconstructRefusesRepeatedPlaceholder(t *testing.T) {
	in := `["x",` + strings.Repeat(`{"_placeholder":true,"num":0},`, 20000) + `1]`
	_, err := Reconstruct(json.RawMessage(in), [][]byte{make([]byte, 50000)})
	if err == nil || !strings.Contains(err.Error(), "more than one placeholder") {
		t.Fatalf("err = %v, want a refusal", err)
	}
	// Distinct attachments, each once, in any order and member order.
	got, err := Reconstruct(json.RawMessage(`[{"num":1,"_placeholder":true},{ "_placeholder" : true , "num" : 0 }]`), [][]byte{{1}, {2}})
	if err != nil || string(got) != `[{"_binary":"Ag=="},{"_binary":"AQ=="}]` {
		t.Fatalf("got %s, %v", got, err)
	}
}

// Nesting beyond MaxDepth is refused; up to it is fine.
func TestRewriteDepthBound(t *testing.T) {
	doc := func(depth int) json.RawMessage {
		return json.RawMessage(strings.Repeat(`[`, depth-1) + `{"_placeholder":true,"num":0}` + strings.Repeat(`]`, depth-1))
	}
	if _, err := Reconstruct(doc(MaxDepth), [][]byte{{1}}); err != nil {
		t.Fatalf("depth %d: %v", MaxDepth, err)
	}
	if _, err := Reconstruct(doc(MaxDepth+2), [][]byte{{1}}); err == nil || !strings.Contains(err.Error(), "nested deeper") {
		t.Fatalf("depth %d: err = %v", MaxDepth+2, err)
	}
	deep := json.RawMessage(`[` + strings.Repeat(`{"a":`, 9000) + `{"_binary":"AQ=="}` + strings.Repeat(`}`, 9000) + `]`)
	if _, _, err := Deconstruct(deep); err == nil {
		t.Fatal("Deconstruct of 9000 levels: no error")
	}
}

// The walk is linear: a large document nested near the bound costs about
// what the same bytes cost flat (the quadratic walk re-read and re-decoded
// every enclosing object at each level: about 60 times more here).
func TestRewriteLinear(t *testing.T) {
	const depth = 60 // an object and an array per level
	big := strings.Repeat(`"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",`, 15000)
	nested := json.RawMessage(strings.Repeat(`{"_placeholder":false,"k":[`, depth) + big + `{"_placeholder":true,"num":0}` + strings.Repeat(`]}`, depth))
	flat := json.RawMessage(`[` + big + strings.Repeat(`{"_placeholder":false},`, depth) + `{"_placeholder":true,"num":0}]`)
	measure := func(doc json.RawMessage) time.Duration {
		best := time.Hour
		for range 3 {
			t0 := time.Now()
			if _, err := Reconstruct(doc, [][]byte{{1}}); err != nil {
				t.Fatal(err)
			}
			best = min(best, time.Since(t0))
		}
		return best
	}
	n, f := measure(nested), measure(flat)
	t.Logf("%d KB nested %d deep: %s; flat: %s", len(nested)>>10, depth, n, f)
	if n > 10*f+5*time.Millisecond {
		t.Fatalf("nested took %s, flat %s: not linear", n, f)
	}
}
